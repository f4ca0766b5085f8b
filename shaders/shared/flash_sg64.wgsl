// flash_subgroup.wgsl for heads up to 64 wide: each of a subgroup's 8 lanes
// holds DQ = 2 texels (8 columns) of every row of q, k, v and O, and UQ = 3
// texels of U' and A U' (dv + 1 <= 65 columns).
const DQ: u32 = 2u;
const UQ: u32 = 3u;
