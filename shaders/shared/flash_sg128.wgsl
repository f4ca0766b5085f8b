// flash_subgroup.wgsl for heads up to 128 wide: 4 texels (16 columns) of q,
// k, v and O per lane, 5 of U' and A U' (dv + 1 <= 129 columns).
const DQ: u32 = 4u;
const UQ: u32 = 5u;
