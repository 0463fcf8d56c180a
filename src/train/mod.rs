//! Training: parameter initialisation, batch sources, optimisers, the engines that compute a
//! step on each backend, and the training loop.

pub mod batch;
pub mod engine;
pub mod init;
pub mod optim;
pub mod run;
pub mod schedule;
