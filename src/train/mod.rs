//! Training: parameter initialisation, optimisers and the training loop.

pub mod init;
