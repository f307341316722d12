//! The stages of a bake. Each owns its I/O and records what it creates in the journal before
//! anything depends on it; each hands the next what it made (an [`Identity`], a [`Builder`]).
//! `teardown` removes what a bake made (after it, or from its journal or tags later).

mod context;
pub mod distribute;
pub mod iam;
pub mod image;
pub mod inventory;
pub mod launch;
pub mod provision;
pub mod source;
pub mod teardown;

pub use context::{Baking, Builder, Identity, Options};

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};

pub fn ec2_tags(tags: &BTreeMap<String, String>) -> Vec<Tag> {
    tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()
}

pub fn tag_spec(kind: ResourceType, tags: &BTreeMap<String, String>) -> TagSpecification {
    TagSpecification::builder().resource_type(kind).set_tags(Some(ec2_tags(tags))).build()
}
