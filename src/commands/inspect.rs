//! `llamagen-eval inspect`: what a checkpoint holds, without loading a model.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::checkpoint::Checkpoint;

#[derive(Args, Debug)]
pub struct InspectCommand {
    /// A torch.save file (zip or legacy format) or a .safetensors file.
    pub file: PathBuf,
}

pub fn run(cmd: &InspectCommand) -> Result<()> {
    let checkpoint = Checkpoint::open(&cmd.file)?;
    print!("{}", checkpoint.summary());
    Ok(())
}
