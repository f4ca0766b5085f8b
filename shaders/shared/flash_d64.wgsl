// The flash kernels for heads up to 64 wide: 8 query rows per invocation.
const ROWS: u32 = 8u;
const DMAX: u32 = 64u;
