//! `saobp demo`: the main job.

use saobp::Result;

#[derive(clap::Args)]
pub struct DemoArgs {}

pub fn run(_args: &DemoArgs) -> Result<()> {
    Ok(())
}
