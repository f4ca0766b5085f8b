//! Character-level text corpora for training (the spec's "Characters" and
//! "The corpus").
//!
//! A [`Vocab`] is the sorted set of the Unicode scalar values of a text; a
//! character's id is its rank. A [`Corpus`] is a text as ids in a vocabulary,
//! split into the first `floor(0.9·len)` characters for training and the rest
//! for validation. It hands out the spec's fixed evaluation windows
//! ([`Corpus::windows`]) and random training batches that are a pure function
//! of `(seed, step)` ([`Corpus::batch`]), so a resumed run draws exactly the
//! batches an uninterrupted one would.
//!
//! Written here rather than taken from a tokenizer crate: a character
//! vocabulary is a sort and a binary search, and tokenizer crates build
//! subword vocabularies, whose ids would not be the ranks the spec fixes.
//!
//! ```
//! # fn main() -> saobp::Result<()> {
//! use saobp::data::{Corpus, Split};
//! let corpus = Corpus::from_text("to be or not to be")?; // 18 characters
//! assert_eq!(corpus.vocab().chars(), &[' ', 'b', 'e', 'n', 'o', 'r', 't']);
//! assert_eq!(corpus.split(Split::Train).len(), 16); // floor(0.9·18)
//! assert_eq!(corpus.vocab().decode(corpus.split(Split::Val))?, "be");
//!
//! // Evaluation: window w is split[w·T .. w·T + T + 1].
//! let (inputs, targets) = corpus.windows(Split::Train, 4, 2)?;
//! assert_eq!(corpus.vocab().decode(&inputs)?, "to be or"); // "to b", "e or"
//! assert_eq!(corpus.vocab().decode(&targets)?, "o be or "); // "o be", " or "
//!
//! // Training: the same (seed, step) gives the same batch.
//! let (x, y) = corpus.batch(7, 3, 2, 4)?; // [2, 4] each
//! assert_eq!(corpus.batch(7, 3, 2, 4)?, (x.clone(), y));
//! assert_eq!(x.len(), 2 * 4);
//! # Ok(()) }
//! ```

use std::fmt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::workload::SplitMix64;

/// Which part of a [`Corpus`]: the first `floor(0.9·len)` characters, or the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The first `floor(0.9·len)` characters.
    Train,
    /// The remaining characters.
    Val,
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Val => "validation",
        })
    }
}

/// A character vocabulary: the sorted distinct Unicode scalar values of a
/// text, each character's id being its rank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocab {
    /// Sorted, distinct; index = id.
    chars: Vec<char>,
}

/// A character as an error message shows it: quoted and escaped (so a
/// newline or an invisible character is legible), with its code point.
fn describe(c: char) -> String {
    let quoted = if c.is_ascii_graphic() || c == ' ' {
        c.escape_debug().to_string()
    } else {
        c.escape_default().to_string()
    };
    format!("'{quoted}' (U+{:04X})", c as u32)
}

impl Vocab {
    /// The vocabulary of `text`: its distinct characters in increasing
    /// order of code point. Empty for an empty text.
    pub fn of_text(text: &str) -> Vocab {
        // Most corpora are mostly ASCII: mark those in a table and sort only
        // the others, instead of sorting every character of the text.
        let mut ascii = [false; 128];
        let mut other = Vec::new();
        for c in text.chars() {
            if c.is_ascii() {
                ascii[c as usize] = true;
            } else {
                other.push(c);
            }
        }
        other.sort_unstable();
        other.dedup();
        let mut chars: Vec<char> = (0u8..128)
            .filter(|&b| ascii[b as usize])
            .map(char::from)
            .collect();
        chars.extend(other);
        Vocab { chars }
    }

    /// Number of characters, the model's `vocab_size`.
    pub fn len(&self) -> usize {
        self.chars.len()
    }

    /// Whether the vocabulary has no characters (only that of an empty text).
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// The characters in id order.
    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    /// The id of each character of `text`. A character outside the
    /// vocabulary is an [`Error::InvalidArgument`] naming it and its offset
    /// in characters.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        // ASCII ids from a table; other characters by binary search.
        let mut ascii = [None; 128];
        for (id, &c) in self.chars.iter().enumerate() {
            if c.is_ascii() {
                ascii[c as usize] = Some(id as u32);
            }
        }
        let mut ids = Vec::with_capacity(text.len());
        for (offset, c) in text.chars().enumerate() {
            let id = if c.is_ascii() {
                ascii[c as usize]
            } else {
                self.chars.binary_search(&c).ok().map(|id| id as u32)
            };
            match id {
                Some(id) => ids.push(id),
                None => {
                    return Err(Error::invalid(format!(
                        "character {} at character offset {offset} is not in the vocabulary ({} characters)",
                        describe(c),
                        self.len()
                    )))
                }
            }
        }
        Ok(ids)
    }

    /// The text of `ids`. An id at or past [`len`](Self::len) is an
    /// [`Error::InvalidArgument`].
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        ids.iter()
            .enumerate()
            .map(|(i, &id)| {
                self.chars.get(id as usize).copied().ok_or_else(|| {
                    Error::invalid(format!(
                        "id {id} at position {i} is out of range for a vocabulary of {} characters",
                        self.len()
                    ))
                })
            })
            .collect()
    }

    /// The vocabulary as a JSON array of one-character strings in id order,
    /// e.g. `["\n"," ","a"]`, as a checkpoint stores it.
    #[cfg(feature = "model")]
    pub fn to_json(&self) -> String {
        let strings: Vec<String> = self.chars.iter().map(|c| c.to_string()).collect();
        serde_json::Value::from(strings).to_string()
    }

    /// Reads [`to_json`](Self::to_json)'s form back. The array must be
    /// non-empty, each entry one character, in strictly increasing order (so
    /// the ids are the ranks [`of_text`](Self::of_text) gives); anything else
    /// is an [`Error::InvalidArgument`] saying what is wrong.
    #[cfg(feature = "model")]
    pub fn from_json(json: &str) -> Result<Vocab> {
        let entries: Vec<String> = serde_json::from_str(json).map_err(|e| {
            Error::invalid(format!("vocabulary JSON is not an array of strings: {e}"))
        })?;
        if entries.is_empty() {
            return Err(Error::invalid("vocabulary JSON is an empty array"));
        }
        let mut chars: Vec<char> = Vec::with_capacity(entries.len());
        for (id, entry) in entries.iter().enumerate() {
            let mut it = entry.chars();
            let c = match (it.next(), it.next()) {
                (Some(c), None) => c,
                _ => {
                    return Err(Error::invalid(format!(
                        "vocabulary entry {id} is {entry:?}, not one character"
                    )))
                }
            };
            if let Some(&prev) = chars.last() {
                if prev >= c {
                    let what = if prev == c { "repeats" } else { "comes after" };
                    return Err(Error::invalid(format!(
                        "vocabulary entry {id} {} {what} entry {} {}: entries must be distinct and sorted by code point",
                        describe(c),
                        id - 1,
                        describe(prev)
                    )));
                }
            }
            chars.push(c);
        }
        Ok(Vocab { chars })
    }
}

/// A text as ids in a [`Vocab`], with its train/validation split.
#[derive(Clone)]
pub struct Corpus {
    vocab: Vocab,
    ids: Vec<u32>,
    /// Characters in the training split, `floor(0.9·len)`.
    train_len: usize,
    fingerprint: String,
}

/// Not the ids: a corpus is millions of them.
impl fmt::Debug for Corpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Corpus")
            .field("len", &self.len())
            .field("vocab_len", &self.vocab.len())
            .field("train_len", &self.train_len)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

/// `"fnv1a64:<16 hex digits>:<characters>"`: the 64-bit FNV-1a hash of the
/// text's UTF-8 bytes, and its length in characters.
fn fingerprint(text: &str, chars: usize) -> String {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("fnv1a64:{hash:016x}:{chars}")
}

// A corpus is never empty (its constructors refuse an empty text).
#[allow(clippy::len_without_is_empty)]
impl Corpus {
    /// The corpus of `text` in its own vocabulary ([`Vocab::of_text`]). An
    /// empty text is an [`Error::InvalidArgument`].
    pub fn from_text(text: &str) -> Result<Corpus> {
        Corpus::with_vocab(text, &Vocab::of_text(text))
    }

    /// The corpus of `text` in a given vocabulary, e.g. a checkpoint's, to
    /// evaluate or resume it. A character outside `vocab` is an error as in
    /// [`Vocab::encode`]; an empty text is an [`Error::InvalidArgument`].
    pub fn with_vocab(text: &str, vocab: &Vocab) -> Result<Corpus> {
        if text.is_empty() {
            return Err(Error::invalid("the corpus text is empty"));
        }
        let ids = vocab.encode(text)?;
        // floor(0.9·n) = n − ceil(n/10), without the overflow of 9·n.
        let train_len = ids.len() - ids.len().div_ceil(10);
        let fingerprint = fingerprint(text, ids.len());
        Ok(Corpus {
            vocab: vocab.clone(),
            ids,
            train_len,
            fingerprint,
        })
    }

    /// Reads a UTF-8 text file, in its own vocabulary (`vocab` `None`) or in
    /// `vocab`. A missing or unreadable file, one that is not UTF-8 (the
    /// message gives the byte offset of the first bad byte), an empty one or
    /// a character outside `vocab` is an [`Error::InvalidArgument`] naming
    /// the file.
    pub fn read(path: &Path, vocab: Option<&Vocab>) -> Result<Corpus> {
        let shown = path.display();
        let bytes = std::fs::read(path)
            .map_err(|e| Error::invalid(format!("cannot read corpus {shown}: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            Error::invalid(format!(
                "corpus {shown} is not UTF-8: invalid byte at byte offset {}",
                e.utf8_error().valid_up_to()
            ))
        })?;
        if text.is_empty() {
            return Err(Error::invalid(format!("corpus {shown} is empty")));
        }
        match vocab {
            None => Corpus::from_text(&text),
            Some(vocab) => Corpus::with_vocab(&text, vocab),
        }
        .map_err(|e| match e {
            Error::InvalidArgument(msg) => Error::invalid(format!("corpus {shown}: {msg}")),
            other => other,
        })
    }

    /// The vocabulary the ids are in.
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// Length in characters (at least 1).
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// The ids of one split: training is the first `floor(0.9·len)`
    /// characters, validation the rest.
    pub fn split(&self, split: Split) -> &[u32] {
        match split {
            Split::Train => &self.ids[..self.train_len],
            Split::Val => &self.ids[self.train_len..],
        }
    }

    /// The identity of the text: `"fnv1a64:<16 hex digits>:<characters>"`,
    /// the 64-bit FNV-1a hash of its UTF-8 bytes and its length. A
    /// checkpoint records it so that resuming on another text is refused.
    pub fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    /// Checks that `split` holds at least `block + 1` characters, one window
    /// of `block` inputs and its shifted targets, and that `block` is
    /// positive; else an [`Error::InvalidArgument`] saying how many it has.
    pub fn check_len(&self, split: Split, block: usize) -> Result<()> {
        if block == 0 {
            return Err(Error::invalid(
                "the block (context length) must be at least 1",
            ));
        }
        let have = self.split(split).len();
        if have <= block {
            return Err(Error::invalid(format!(
                "{split} split has {have} characters; a block of {block} needs at least {}",
                block as u128 + 1
            )));
        }
        Ok(())
    }

    /// How many evaluation windows of `block` characters `split` holds:
    /// window `w` needs `w·T + T + 1` characters, so `(len − 1) / T` of them
    /// fit (0 for a block of 0).
    pub fn max_windows(&self, split: Split, block: usize) -> usize {
        if block == 0 {
            return 0;
        }
        self.split(split).len().saturating_sub(1) / block
    }

    /// The spec's fixed evaluation windows `w = 0 .. count`: inputs
    /// `split[w·T .. w·T + T]`, targets `split[w·T + 1 .. w·T + T + 1]`, each
    /// row-major `[count, T]`. A `count` of 0, or more windows than
    /// [`max_windows`](Self::max_windows), is an [`Error::InvalidArgument`]
    /// saying how many fit.
    pub fn windows(
        &self,
        split: Split,
        block: usize,
        count: usize,
    ) -> Result<(Vec<u32>, Vec<u32>)> {
        self.check_len(split, block)?;
        let fit = self.max_windows(split, block);
        if count == 0 || count > fit {
            return Err(Error::invalid(format!(
                "{count} evaluation windows of {block} characters asked for; the {split} split ({} characters) holds {fit}",
                self.split(split).len()
            )));
        }
        let ids = self.split(split);
        // count·T + 1 ≤ len, so neither the sizes nor the offsets overflow.
        let mut inputs = Vec::with_capacity(count * block);
        let mut targets = Vec::with_capacity(count * block);
        for w in 0..count {
            let start = w * block;
            inputs.extend_from_slice(&ids[start..start + block]);
            targets.extend_from_slice(&ids[start + 1..start + block + 1]);
        }
        Ok((inputs, targets))
    }

    /// A training batch of `batch` windows of the training split, each at an
    /// offset `o` uniform in `0 ..= len − T − 1`: inputs `x[o .. o + T]`,
    /// targets `x[o + 1 .. o + T + 1]`, each row-major `[batch, T]`.
    ///
    /// It is a pure function of `(seed, step)`, so resuming at step `s`
    /// draws the batches an uninterrupted run draws. The offsets come from
    /// [`SplitMix64`] started at `SplitMix64(seed ⊕ SplitMix64(step).next).next`
    /// (`SplitMix64(x).next` the first output of the generator started at
    /// `x`), one [`below`](SplitMix64::below) draw per row. The first output
    /// is a bijection of the start, so with one seed every step starts the
    /// generator at a different state; hashing `step` before it meets `seed`
    /// keeps consecutive steps from starting at states one generator stride
    /// apart, which would make their streams shifted copies of each other.
    ///
    /// A `batch` of 0, a training split shorter than `block + 1` or a batch
    /// too large to allocate is an [`Error::InvalidArgument`].
    pub fn batch(
        &self,
        seed: u64,
        step: u64,
        batch: usize,
        block: usize,
    ) -> Result<(Vec<u32>, Vec<u32>)> {
        self.check_len(Split::Train, block)?;
        if batch == 0 {
            return Err(Error::invalid("the batch size must be at least 1"));
        }
        let size = batch
            .checked_mul(block)
            .ok_or_else(|| Error::invalid(format!("a batch of {batch}×{block} ids overflows")))?;
        let cannot = |_| {
            Error::invalid(format!(
                "a batch of {batch}×{block} ids does not fit in memory"
            ))
        };
        let mut inputs = Vec::new();
        inputs.try_reserve_exact(size).map_err(cannot)?;
        let mut targets = Vec::new();
        targets.try_reserve_exact(size).map_err(cannot)?;
        let ids = self.split(Split::Train);
        // Offsets 0 ..= len − T − 1: len − T of them, at least 1 after check_len.
        let offsets = ids.len() - block;
        let key = SplitMix64::new(seed ^ SplitMix64::new(step).next_u64()).next_u64();
        let mut rng = SplitMix64::new(key);
        for _ in 0..batch {
            let o = rng.below(offsets);
            inputs.extend_from_slice(&ids[o..o + block]);
            targets.extend_from_slice(&ids[o + 1..o + block + 1]);
        }
        Ok((inputs, targets))
    }
}
