// flash_subgroup.wgsl for heads up to 64 wide: each of a subgroup's 8 lanes
// holds DQ = 2 texels (8 columns) of every row of q, k, v, O, U' and A U'.
const DQ: u32 = 2u;
