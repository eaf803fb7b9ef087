//! The library in-process against its references: the GPT and VQ models against LlamaGen's golden
//! outputs (c2i and t2i), the sampler's tensor draws against its host reference, Inception against
//! torch-fidelity and pytorch-fid, the checkpoint reader against torch, image folders against
//! Pillow, CLIP against Hugging Face and CMMD's preprocessing, the T5 and CLIP text encoders against
//! Hugging Face and the caption tokenizers against the `tokenizers` package; the input readers
//! fuzzed; and the layering of `src/` read from its imports. One binary: the modules share one libtorch process, so settings such as
//! `tch::set_num_threads` hold for all of them.

mod harness;

mod checkpoint;
mod clip_golden;
mod clip_text_golden;
mod dinov2_golden;
mod draws;
mod folder_images;
mod fuzz_readers;
mod gpt_bf16;
mod gpt_golden;
mod gpt_t2i_golden;
mod inception_parity;
mod layering;
mod t5_golden;
mod tokenizer_parity;
mod vq_golden;
