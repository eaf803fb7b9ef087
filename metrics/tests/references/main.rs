//! The metrics against their references, in one binary: the ADM evaluator's golden figures,
//! pytorch-fid, scikit-image, torch-fidelity, google-research cmmd.

mod adm_golden;
mod cmmd_golden;
mod frechet_infinity;
mod frechet_parity;
mod image_quality;
mod manifold_kid;
mod torch_fidelity_isc;
