pub mod cryptopan;
pub mod envelope;
pub mod keys;
pub mod token;
pub mod config;
pub mod plan;
pub mod rules;
pub mod transform;
