//! Ranged readback (`Tensor::to_vec_range`): any sub-range comes back bit for
//! bit, an empty range is empty, and a range outside the tensor is a typed
//! error that leaves the context usable.

mod common;

use common::on_every_gpu;
use saobp::{Error, Tensor};

/// Distinct, exactly representable values: a copy that is off by one element
/// or reads the wrong bytes shows as a mismatch.
fn values(len: usize) -> Vec<f32> {
    (0..len).map(|i| i as f32 * 0.25 - 100.0).collect()
}

#[test]
fn sub_ranges_come_back_exactly() {
    on_every_gpu("ranged readback", |gpu| {
        let shape = [2, 3, 16, 16];
        let data = values(shape.iter().product());
        let t = Tensor::from_slice(gpu, &shape, &data).unwrap();
        let len = data.len();
        let head = 16 * 16;
        let ranges = [
            0..len,
            0..1,
            len - 1..len,
            1..4,
            // One head's block of an [B, H, N, N] map, as the web page reads it.
            4 * head..5 * head,
            len - head..len,
            777..1031,
        ];
        for r in ranges {
            let got = t.to_vec_range_blocking(gpu, r.clone()).unwrap();
            assert_eq!(got, data[r.clone()], "range {r:?}");
        }
        // Reads of several sizes in a row reuse the pool's staging buffers;
        // none may hand back a previous read's contents.
        for (start, len) in [(3, 5), (10, 5), (3, 9), (100, 5)] {
            let got = t.to_vec_range_blocking(gpu, start..start + len).unwrap();
            assert_eq!(
                got,
                data[start..start + len],
                "range {start}..{}",
                start + len
            );
        }
        // A reshaped view shares the buffer: its ranges index the same data.
        let flat = t.reshape(&[len]).unwrap();
        assert_eq!(
            flat.to_vec_range_blocking(gpu, 500..600).unwrap(),
            data[500..600]
        );
        assert_eq!(
            t.to_vec_range_blocking(gpu, 0..len).unwrap(),
            t.to_vec_blocking(gpu).unwrap()
        );
    });
}

#[test]
fn empty_ranges_are_empty() {
    on_every_gpu("empty ranged readback", |gpu| {
        let t = Tensor::from_slice(gpu, &[4, 5], &values(20)).unwrap();
        for at in [0, 7, 20] {
            assert_eq!(
                t.to_vec_range_blocking(gpu, at..at).unwrap(),
                Vec::<f32>::new(),
                "range {at}..{at}"
            );
        }
        let empty = Tensor::from_slice(gpu, &[0, 3], &[]).unwrap();
        assert_eq!(
            empty.to_vec_range_blocking(gpu, 0..0).unwrap(),
            Vec::<f32>::new()
        );
        assert!(matches!(
            empty.to_vec_range_blocking(gpu, 0..1),
            Err(Error::InvalidArgument(_))
        ));
    });
}

#[test]
fn ranges_outside_the_tensor_are_refused() {
    on_every_gpu("out-of-range readback", |gpu| {
        let data = values(20);
        let t = Tensor::from_slice(gpu, &[4, 5], &data).unwrap();
        // `5..3` is reversed on purpose.
        #[allow(clippy::reversed_empty_ranges)]
        let bad = [0..21, 19..21, 20..21, 21..21, 25..30, 5..3, 0..usize::MAX];
        for r in bad {
            match t.to_vec_range_blocking(gpu, r.clone()) {
                Err(Error::InvalidArgument(message)) => {
                    assert!(message.contains("[4, 5]"), "range {r:?}: {message}");
                }
                other => panic!("range {r:?}: expected InvalidArgument, got {other:?}"),
            }
        }
        // The refusal happens before any GPU work: the context stays usable.
        assert_eq!(t.to_vec_range_blocking(gpu, 15..20).unwrap(), data[15..20]);
    });
}
