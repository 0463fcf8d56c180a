//! Training: parameter initialisation, optimisers and the training loop.

pub mod batch;
pub mod init;
