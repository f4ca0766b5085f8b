//! `saobp refine`'s input parsing: any bytes give a checked input or an error,
//! never a crash, and never an allocation larger than the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(input) = saobp::io::parse_refine_input(data) {
        // Whatever parses is consistent.
        let numel = |s: &[usize]| s.iter().product::<usize>();
        assert_eq!(input.q.len(), numel(&input.q_shape));
        assert_eq!(input.k.len(), input.q.len());
        assert_eq!(input.v.len(), numel(&input.v_shape));
        assert!(input.q.iter().chain(&input.k).chain(&input.v).all(|x| x.is_finite()));
        if let Some(m) = &input.key_mask {
            assert!(m.iter().all(|&x| x == 0.0 || x == 1.0));
        }
    }
});
