// flash_subgroup.wgsl for heads up to 128 wide: each lane holds 4 texels
// (16 columns) of every row of q, k, v, O, U' and A U'.
const DQ: u32 = 4u;
