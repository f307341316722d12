//! bake: turns a role (an ordered run list of cookbooks plus attributes, per environment) into a
//! golden AMI, and rolls Auto Scaling groups onto it.

pub mod app;
pub mod cli;
pub mod config;
pub mod plan;
pub mod template;
pub mod validate;
