//! Character-level text corpora for training (the spec's "Characters").
