//! What a running bake holds, shared by its stages, and what each stage hands to the next.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Instant;

use crate::aws::{Aws, Clients};
use crate::error::Result;
use crate::journal::{BakeId, JournalHandle, Kind, Resource};
use crate::manifest::Manifest;
use crate::plan::Plan;
use crate::progress::Reporter;
use crate::stages::source::SourceImage;

/// What the operator asked for, beyond the plan.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Keep the builder (and everything else) when a stage fails, for debugging.
    pub keep_on_error: bool,
    /// Bake even when an image with the same fingerprint exists.
    pub force: bool,
    /// `bake patch`: record the source image's lineage.
    pub patch: bool,
    pub git_sha: Option<String>,
    /// `bake patch --affected`: what the builder must no longer hold once patched; checked in
    /// its inventory before any image is made.
    pub fixes: Vec<crate::inventory::Vulnerable>,
}

/// The builder's temporary identity (iam → launch).
#[derive(Clone, Debug)]
pub struct Identity {
    pub role: String,
    pub profile: String,
}

/// The launched builder (launch → agent, provision, image).
#[derive(Clone, Debug)]
pub struct Builder {
    pub instance: String,
}

/// A bake in progress: its plan, where it runs, its journal, its manifest so far. The images made
/// are the manifest's (`manifest.images`, the build region's under `region`).
pub struct Baking {
    pub id: BakeId,
    /// The project folder (its state folder holds inventories).
    pub root: std::path::PathBuf,
    pub plan: Plan,
    pub region: String,
    pub aws: Aws,
    pub c: Clients,
    pub journal: JournalHandle,
    pub report: Reporter,
    pub manifest: Manifest,
    pub opts: Options,
    pub source: SourceImage,
    pub fingerprint: String,
    pub stage_started: Instant,
    /// AMI Block Public Access per region, read before sharing there.
    pub public_access: Mutex<BTreeMap<String, String>>,
    /// The images this run created (the build region's and its copies): nobody may launch them
    /// yet, so sharing them needs no look at their launch permissions first.
    pub fresh: BTreeSet<String>,
}

impl Baking {
    /// Tags every bake resource carries.
    pub fn base_tags(&self) -> BTreeMap<String, String> {
        let mut t = BTreeMap::new();
        t.insert(crate::tags::ID.to_string(), self.id.to_string());
        t.insert(crate::tags::ROLE.to_string(), self.plan.role.clone());
        t.insert(crate::tags::ENV.to_string(), self.plan.env.clone());
        t.insert(crate::tags::MANAGED.to_string(), "true".to_string());
        t.insert(crate::tags::CREATED.to_string(), self.manifest.started_at.clone());
        t
    }

    /// Tags of the image and its snapshots: the role's, then provenance.
    pub fn image_tags(&self, name: &str) -> BTreeMap<String, String> {
        let mut t: BTreeMap<String, String> = self.plan.image.tags.clone();
        t.extend(self.base_tags());
        t.insert("Name".to_string(), name.to_string());
        t.insert(crate::tags::SOURCE_AMI.to_string(), self.source.id.clone());
        t.insert(crate::tags::FINGERPRINT.to_string(), self.fingerprint.clone());
        if let Some(a) = &self.plan.arch {
            t.insert(crate::tags::ARCH.to_string(), a.clone());
        }
        let mut cookbooks = self.plan.run_list.join(",");
        cookbooks.truncate(256);
        t.insert(crate::tags::COOKBOOKS.to_string(), cookbooks);
        if let Some(sha) = &self.opts.git_sha {
            t.insert(crate::tags::GIT_SHA.to_string(), sha.clone());
        }
        if let Some(inv) = &self.manifest.inventory {
            t.insert(crate::tags::INVENTORY.to_string(), inv.sha256.clone());
        }
        t
    }

    pub fn created(&self, kind: Kind, id: &str, region: &str) -> Result<()> {
        self.journal.created(Resource::new(kind, id, region))
    }

    /// Marks the end of a stage in the manifest and starts timing the next.
    pub fn stage(&mut self, name: &str, detail: &str) {
        self.report.stage(name, detail);
        self.stage_started = Instant::now();
    }

    pub fn stage_done(&mut self, name: &str) {
        let secs = self.stage_started.elapsed().as_secs_f64();
        *self.manifest.stages.entry(name.to_string()).or_default() += secs;
    }

    /// The images made so far, the build region's first: region → image id.
    pub fn images(&self) -> Vec<(String, String)> {
        let home = self.manifest.images.get(&self.region).map(|i| (self.region.clone(), i.ami_id.clone()));
        home.into_iter().chain(self.manifest.images.iter().filter(|(r, _)| **r != self.region).map(|(r, i)| (r.clone(), i.ami_id.clone()))).collect()
    }
}
