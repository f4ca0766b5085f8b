//! Subcommands of the `saobp` binary, one module each.

pub mod demo;
pub mod info;
