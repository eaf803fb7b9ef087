//! The command-line tests: one binary, one module per command (and `resume` for runs killed and
//! resumed), all running the built `llamagen-eval` through [`harness::cli`].

mod harness;

mod check;
mod demo;
mod distributed;
mod distributed_images;
mod doctor;
mod feature_networks;
mod fid;
mod hostile_checkpoints;
mod hostile_inputs;
mod inspect;
mod merge_features;
mod metrics;
mod recon;
mod report;
mod resume;
mod sample;
mod t2i;
