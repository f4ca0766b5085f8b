//! Character corpora (`saobp::data`): vocabulary order and ids, the 90/10
//! split, the fixed evaluation windows, the seeded training batches, the
//! vocabulary's JSON form and every error a user can meet, against values
//! written out by hand.

use saobp::data::{Corpus, Split, Vocab};
use saobp::workload::SplitMix64;
use saobp::Error;

/// The message of an `InvalidArgument`, failing the test on anything else.
fn invalid<T: std::fmt::Debug>(result: saobp::Result<T>) -> String {
    match result {
        Err(Error::InvalidArgument(msg)) => msg,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

fn assert_contains(msg: &str, parts: &[&str]) {
    for part in parts {
        assert!(msg.contains(part), "{msg:?} lacks {part:?}");
    }
}

#[test]
fn vocab_is_sorted_code_points_and_ids_are_ranks() {
    let text = "é—a😀 é\n";
    let vocab = Vocab::of_text(text);
    assert_eq!(vocab.chars(), &['\n', ' ', 'a', 'é', '—', '😀']);
    assert_eq!(vocab.len(), 6);
    assert!(!vocab.is_empty());
    assert_eq!(vocab.encode(text).unwrap(), vec![3, 4, 2, 5, 1, 3, 0]);
    assert_eq!(vocab.decode(&[5, 0, 3, 4]).unwrap(), "😀\né—");
    assert_eq!(vocab.decode(&[]).unwrap(), "");

    let empty = Vocab::of_text("");
    assert!(empty.is_empty());
    assert_eq!(empty.len(), 0);
}

#[test]
fn encode_then_decode_is_the_identity() {
    let text = "Thou art more lovely — and more temperate: ½ “quoted” 😀\n\tend";
    let vocab = Vocab::of_text(text);
    let ids = vocab.encode(text).unwrap();
    assert_eq!(ids.len(), text.chars().count());
    assert_eq!(vocab.decode(&ids).unwrap(), text);
    // Every id is in range and each character maps to its own rank.
    for (&id, c) in ids.iter().zip(text.chars()) {
        assert_eq!(vocab.chars()[id as usize], c);
    }
}

#[test]
fn encode_names_an_unknown_character_and_its_character_offset() {
    let vocab = Vocab::of_text("éa");
    // Byte offset 4, character offset 2: the message must give the latter.
    let msg = invalid(vocab.encode("éé😀a"));
    assert_contains(&msg, &["'\\u{1f600}'", "U+1F600", "character offset 2"]);
    let msg = invalid(vocab.encode("a\n"));
    assert_contains(&msg, &["'\\n'", "U+000A", "character offset 1"]);
}

#[test]
fn decode_refuses_an_id_out_of_range() {
    let vocab = Vocab::of_text("abc");
    let msg = invalid(vocab.decode(&[0, 2, 3]));
    assert_contains(&msg, &["id 3", "position 2", "3 characters"]);
    invalid(vocab.decode(&[u32::MAX]));
}

#[test]
fn split_is_floor_nine_tenths() {
    for (len, train) in [
        (1, 0),
        (9, 8),
        (10, 9),
        (11, 9),
        (19, 17),
        (20, 18),
        (101, 90),
    ] {
        let text: String = "abcdefghij".chars().cycle().take(len).collect();
        let corpus = Corpus::from_text(&text).unwrap();
        assert_eq!(corpus.len(), len);
        assert_eq!(corpus.split(Split::Train).len(), train, "len {len}");
        assert_eq!(corpus.split(Split::Val).len(), len - train, "len {len}");
    }
    let ten = Corpus::from_text("abcdefghij").unwrap();
    assert_eq!(ten.split(Split::Train), &[0, 1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(ten.split(Split::Val), &[9]);
    let eleven = Corpus::from_text("abcdefghijk").unwrap();
    assert_eq!(eleven.split(Split::Train), &[0, 1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(eleven.split(Split::Val), &[9, 10]);
}

#[test]
fn corpus_in_a_given_vocabulary() {
    let vocab = Vocab::of_text("abc");
    let corpus = Corpus::with_vocab("cab", &vocab).unwrap();
    assert_eq!(corpus.vocab(), &vocab);
    assert_eq!(corpus.split(Split::Train), &[2, 0]);
    assert_eq!(corpus.split(Split::Val), &[1]);
    // The fingerprint is the text's, whatever the vocabulary.
    assert_eq!(
        corpus.fingerprint(),
        Corpus::from_text("cab").unwrap().fingerprint()
    );
    let msg = invalid(Corpus::with_vocab("abd", &vocab));
    assert_contains(&msg, &["'d'", "character offset 2"]);
    invalid(Corpus::with_vocab("", &vocab));
    invalid(Corpus::from_text(""));
}

#[test]
fn evaluation_windows_are_fixed_slices() {
    // 20 distinct characters: ids equal positions; train is ids 0..18.
    let corpus = Corpus::from_text("abcdefghijklmnopqrst").unwrap();
    assert_eq!(corpus.max_windows(Split::Train, 4), 4); // (18 − 1) / 4
    let (inputs, targets) = corpus.windows(Split::Train, 4, 4).unwrap();
    assert_eq!(
        inputs,
        vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
    );
    assert_eq!(
        targets,
        vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
    );
    let (inputs, targets) = corpus.windows(Split::Train, 17, 1).unwrap();
    assert_eq!(inputs, (0..17).collect::<Vec<u32>>());
    assert_eq!(targets, (1..18).collect::<Vec<u32>>());
    // Validation: "st", one window of one character.
    assert_eq!(corpus.max_windows(Split::Val, 1), 1);
    assert_eq!(
        corpus.windows(Split::Val, 1, 1).unwrap(),
        (vec![18], vec![19])
    );

    // Repeated characters: ids are ranks, not positions.
    let corpus = Corpus::from_text("to be or not to be").unwrap(); // ' ' b e n o r t
    let (inputs, targets) = corpus.windows(Split::Train, 3, 5).unwrap();
    // "to be or not to " → "to ", "be ", "or ", "not", " to", targets shifted.
    assert_eq!(inputs, vec![6, 4, 0, 1, 2, 0, 4, 5, 0, 3, 4, 6, 0, 6, 4]);
    assert_eq!(targets, vec![4, 0, 1, 2, 0, 4, 5, 0, 3, 4, 6, 0, 6, 4, 0]);
}

#[test]
fn windows_refuse_zero_or_too_many() {
    let corpus = Corpus::from_text("abcdefghijklmnopqrst").unwrap();
    let msg = invalid(corpus.windows(Split::Train, 4, 5));
    assert_contains(
        &msg,
        &[
            "5 evaluation windows",
            "train split (18 characters) holds 4",
        ],
    );
    let msg = invalid(corpus.windows(Split::Train, 4, 0));
    assert_contains(&msg, &["holds 4"]);
    invalid(corpus.windows(Split::Train, 0, 1));
    let msg = invalid(corpus.windows(Split::Val, 2, 1));
    assert_eq!(
        msg,
        "validation split has 2 characters; a block of 2 needs at least 3"
    );
    invalid(corpus.windows(Split::Train, usize::MAX, 1));
    assert_eq!(corpus.max_windows(Split::Train, 0), 0);
    assert_eq!(corpus.max_windows(Split::Train, 18), 0);
    assert_eq!(corpus.max_windows(Split::Train, usize::MAX), 0);
}

#[test]
fn check_len_needs_block_plus_one() {
    let corpus = Corpus::from_text("abcdefghij").unwrap(); // train 9, val 1
    corpus.check_len(Split::Train, 8).unwrap();
    assert_eq!(
        invalid(corpus.check_len(Split::Train, 9)),
        "train split has 9 characters; a block of 9 needs at least 10"
    );
    assert_eq!(
        invalid(corpus.check_len(Split::Val, 1)),
        "validation split has 1 characters; a block of 1 needs at least 2"
    );
    let msg = invalid(corpus.check_len(Split::Train, usize::MAX));
    assert_contains(&msg, &["needs at least 18446744073709551616"]);
    invalid(corpus.check_len(Split::Train, 0));
}

/// A text whose characters are all distinct, so an id is its position.
fn distinct_text(len: u32) -> String {
    (0..len)
        .map(|i| char::from_u32(0x100 + i).unwrap())
        .collect()
}

#[test]
fn batch_rows_are_train_slices_with_targets_shifted_by_one() {
    let corpus = Corpus::from_text(&distinct_text(1000)).unwrap();
    let train = corpus.split(Split::Train);
    assert_eq!(train.len(), 900);
    let (batch, block) = (8, 16);
    for step in 0..50 {
        let (x, y) = corpus.batch(42, step, batch, block).unwrap();
        assert_eq!((x.len(), y.len()), (batch * block, batch * block));
        for (row_x, row_y) in x.chunks(block).zip(y.chunks(block)) {
            let o = row_x[0] as usize;
            assert!(o + block < train.len(), "offset {o} leaves no target");
            assert_eq!(row_x, &train[o..o + block]);
            assert_eq!(row_y, &train[o + 1..o + block + 1]);
        }
    }
}

#[test]
fn batch_is_a_pure_function_of_seed_and_step() {
    let corpus = Corpus::from_text(&distinct_text(1000)).unwrap();
    let a = corpus.batch(7, 123, 8, 16).unwrap();
    // Other calls in between change nothing: no state is carried.
    corpus.batch(7, 5, 8, 16).unwrap();
    assert_eq!(corpus.batch(7, 123, 8, 16).unwrap(), a);
    assert_ne!(corpus.batch(7, 124, 8, 16).unwrap(), a);
    assert_ne!(corpus.batch(8, 123, 8, 16).unwrap(), a);

    // The documented draw: SplitMix64 started at the first output of
    // SplitMix64(seed ⊕ first output of SplitMix64(step)), one `below` per row.
    let (seed, step, block) = (0xDEAD_BEEF_u64, 99_u64, 16);
    let key = SplitMix64::new(seed ^ SplitMix64::new(step).next_u64()).next_u64();
    let mut rng = SplitMix64::new(key);
    let expected: Vec<u32> = (0..8)
        .flat_map(|_| {
            let o = rng.below(900 - block) as u32;
            o..o + block as u32
        })
        .collect();
    assert_eq!(corpus.batch(seed, step, 8, block).unwrap().0, expected);
}

#[test]
fn batch_offsets_cover_exactly_zero_to_len_minus_block_minus_one() {
    // Train is 18 characters; a block of 4 has offsets 0 ..= 13.
    let corpus = Corpus::from_text("abcdefghijklmnopqrst").unwrap();
    let mut seen = [0usize; 18];
    for step in 0..200 {
        let (x, _) = corpus.batch(1, step, 8, 4).unwrap();
        for row in x.chunks(4) {
            seen[row[0] as usize] += 1;
        }
    }
    for (o, &n) in seen.iter().enumerate() {
        if o <= 13 {
            assert!(n > 0, "offset {o} never drawn");
        } else {
            assert_eq!(n, 0, "offset {o} drawn but out of range");
        }
    }
}

#[test]
fn batch_refuses_bad_sizes_without_panicking() {
    let corpus = Corpus::from_text("abcdefghijklmnopqrst").unwrap();
    invalid(corpus.batch(0, 0, 0, 4));
    invalid(corpus.batch(0, 0, 1, 0));
    assert_eq!(
        invalid(corpus.batch(0, 0, 1, 18)),
        "train split has 18 characters; a block of 18 needs at least 19"
    );
    // The largest block that fits has exactly one offset.
    assert_eq!(
        corpus.batch(3, 3, 2, 17).unwrap().0,
        [(0..17).collect::<Vec<u32>>(), (0..17).collect()].concat()
    );

    let big = Corpus::from_text(&distinct_text(100)).unwrap();
    let msg = invalid(big.batch(0, 0, usize::MAX, 2));
    assert_contains(&msg, &["overflows"]);
    let msg = invalid(big.batch(0, 0, 1 << 60, 2));
    assert_contains(&msg, &["does not fit in memory"]);
}

#[test]
fn fingerprint_is_fnv1a_of_the_bytes_and_the_length() {
    // FNV-1a 64 test vectors.
    assert_eq!(
        Corpus::from_text("a").unwrap().fingerprint(),
        "fnv1a64:af63dc4c8601ec8c:1"
    );
    assert_eq!(
        Corpus::from_text("foobar").unwrap().fingerprint(),
        "fnv1a64:85944171f73967e8:6"
    );
    let a = Corpus::from_text("to be or not to be").unwrap();
    let b = Corpus::from_text("to be or not to be").unwrap();
    let c = Corpus::from_text("to be or not to bE").unwrap();
    assert_eq!(a.fingerprint(), b.fingerprint());
    assert_ne!(a.fingerprint(), c.fingerprint());
    // Length in characters, not bytes.
    assert!(Corpus::from_text("é😀")
        .unwrap()
        .fingerprint()
        .ends_with(":2"));
}

#[cfg(feature = "model")]
mod json {
    use super::*;

    #[test]
    fn vocab_round_trips_through_json() {
        let vocab = Vocab::of_text("é—a😀 é\n\"\\");
        let json = vocab.to_json();
        assert_eq!(json, r#"["\n"," ","\"","\\","a","é","—","😀"]"#);
        assert_eq!(Vocab::from_json(&json).unwrap(), vocab);
        // Escaped forms read back too.
        let escaped = Vocab::from_json(r#"["\u0041","\ud83d\ude00"]"#).unwrap();
        assert_eq!(escaped.chars(), &['A', '😀']);
    }

    #[test]
    fn from_json_says_what_is_wrong() {
        for bad in ["not json", "{}", "[1, 2]", r#"["a", null]"#] {
            let msg = invalid(Vocab::from_json(bad));
            assert_contains(&msg, &["not an array of strings"]);
        }
        assert_contains(&invalid(Vocab::from_json("[]")), &["empty array"]);
        let msg = invalid(Vocab::from_json(r#"["a","bc"]"#));
        assert_contains(&msg, &["entry 1", "\"bc\"", "not one character"]);
        let msg = invalid(Vocab::from_json(r#"[""]"#));
        assert_contains(&msg, &["entry 0", "not one character"]);
        let msg = invalid(Vocab::from_json(r#"["a","c","b"]"#));
        assert_contains(&msg, &["entry 2 'b'", "comes after entry 1 'c'", "sorted"]);
        let msg = invalid(Vocab::from_json(r#"["a","a"]"#));
        assert_contains(&msg, &["entry 1 'a'", "repeats entry 0", "distinct"]);
    }
}

mod read {
    use super::*;
    use std::path::Path;

    fn file(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn reads_a_text_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), "t.txt", "abcdefghié".as_bytes());
        let corpus = Corpus::read(&path, None).unwrap();
        assert_eq!(corpus.len(), 10);
        assert_eq!(corpus.vocab().chars().last(), Some(&'é'));
        assert_eq!(
            corpus.fingerprint(),
            Corpus::from_text("abcdefghié").unwrap().fingerprint()
        );
        let vocab = Vocab::of_text("abcdefghijé");
        let corpus = Corpus::read(&path, Some(&vocab)).unwrap();
        assert_eq!(corpus.split(Split::Val), &[10]);
    }

    #[test]
    fn read_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.txt");
        let msg = invalid(Corpus::read(&missing, None));
        assert_contains(&msg, &["cannot read corpus", "missing.txt"]);

        let empty = file(dir.path(), "empty.txt", b"");
        let msg = invalid(Corpus::read(&empty, None));
        assert_contains(&msg, &["empty.txt", "is empty"]);

        // 'é' is two bytes: the bad byte is at byte offset 3.
        let latin1 = file(dir.path(), "latin1.txt", b"a\xc3\xa9\xffz");
        let msg = invalid(Corpus::read(&latin1, None));
        assert_contains(&msg, &["latin1.txt", "not UTF-8", "byte offset 3"]);

        let other = file(dir.path(), "other.txt", b"abcx");
        let msg = invalid(Corpus::read(&other, Some(&Vocab::of_text("abc"))));
        assert_contains(&msg, &["other.txt", "'x'", "character offset 3"]);

        let dir_as_file = invalid(Corpus::read(dir.path(), None));
        assert_contains(&dir_as_file, &["cannot read corpus"]);
    }

    #[test]
    fn a_split_too_short_for_the_block_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), "short.txt", b"0123456789");
        let corpus = Corpus::read(&path, None).unwrap();
        assert_eq!(
            invalid(corpus.check_len(Split::Val, 1)),
            "validation split has 1 characters; a block of 1 needs at least 2"
        );
        invalid(corpus.windows(Split::Val, 1, 1));
        invalid(corpus.batch(0, 0, 1, 9));
    }

    /// The real corpus, when `scripts/fetch-corpus.sh` has put it there:
    /// the spec's counts, and its fingerprint for checkpoints to match.
    #[test]
    fn shakespeare_has_the_spec_counts() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/shakespeare.txt");
        if !path.exists() {
            eprintln!("skipped: data/shakespeare.txt is absent (scripts/fetch-corpus.sh)");
            return;
        }
        let corpus = Corpus::read(&path, None).unwrap();
        assert_eq!(corpus.len(), 5_057_198);
        assert_eq!(corpus.vocab().len(), 84);
        assert_eq!(corpus.split(Split::Train).len(), 4_551_478);
        assert_eq!(corpus.fingerprint(), "fnv1a64:0ac791127fbe7f66:5057198");
        let chars: String = corpus.vocab().chars().iter().collect();
        assert_eq!(
            chars,
            "\n !\"&'()*,-./0123456789:;?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]_abcdefghijklmnopqrstuvwxyz{}"
        );
    }
}
