//! bake: turns a role (an ordered run list of cookbooks plus attributes, per environment) into a
//! golden AMI, and rolls Auto Scaling groups onto it.

pub mod audit;
pub mod aws;
pub mod bootstrap;
pub mod build;
pub mod catalog;
pub mod commands;
pub mod config;
pub mod error;
pub mod inventory;
pub mod journal;
pub mod lock;
pub mod manifest;
pub mod notify;
pub mod pace;
pub mod patch;
pub mod pipeline;
pub mod plan;
pub mod progress;
pub mod recovery;
pub mod remote;
pub mod roll;
pub mod signals;
pub mod stages;
pub mod status;
pub mod tags;
pub mod template;
pub mod validate;
pub mod wait;
