// The flash kernels for heads up to 128 wide: 4 query rows per invocation,
// so the private q and accumulator arrays stay as large as at d = 64.
const ROWS: u32 = 4u;
const DMAX: u32 = 128u;
