//! The tag keys bake reads and writes, in one place. What they mean:
//! - on everything bake makes: `MANAGED` (`true`), `ID` (the bake or roll id), `ROLE`, `ENV`,
//!   `CREATED`; the orphan sweep and the operator policy touch only what carries them;
//! - on what teams opt in to bake (Auto Scaling groups, their launch templates, their instance
//!   roles): `ROLE` and `ENV`, set by their owners;
//! - on images: provenance and lineage; on groups: what a roll did, for `bake roll --rollback`.

pub const MANAGED: &str = "bake:managed";
pub const ID: &str = "bake:id";
pub const ROLE: &str = "bake:role";
pub const ENV: &str = "bake:env";
pub const CREATED: &str = "bake:created";

/// An image (and its snapshots) that is a finished bake's product.
pub const COMPLETE: &str = "bake:complete";
/// The architecture of an image of a role that bakes several.
pub const ARCH: &str = "bake:arch";
pub const SOURCE_AMI: &str = "bake:source-ami";
pub const FINGERPRINT: &str = "bake:fingerprint";
pub const COOKBOOKS: &str = "bake:cookbooks";
pub const GIT_SHA: &str = "bake:git-sha";
pub const COPY_OF: &str = "bake:copy-of";
/// `bake` or `patch`.
pub const KIND: &str = "bake:kind";
pub const PATCH_OF: &str = "bake:patch-of";
pub const CVE: &str = "bake:cve";
pub const PATCHED_PACKAGES: &str = "bake:patched-packages";
/// The sha256 of the image's package inventory (`bake audit` reads the inventory it names).
pub const INVENTORY: &str = "bake:inventory";
/// When `bake prune` disabled the image (staged retirement): it is deregistered `retire_after` later.
pub const RETIRED: &str = "bake:retired-at";

/// On groups a roll moved.
pub const IMAGE: &str = "bake:image";
pub const PREVIOUS_IMAGE: &str = "bake:previous-image";
pub const PREVIOUS_VERSION: &str = "bake:previous-version";
/// A mixed-instances group's templates before a roll: `lt-…=3,lt-…=5`.
pub const PREVIOUS_VERSIONS: &str = "bake:previous-versions";
pub const PREVIOUS_LAUNCH_CONFIGURATION: &str = "bake:previous-launch-configuration";
pub const ROLL_ID: &str = "bake:roll-id";
/// On a launch template bake made from a group's launch configuration.
pub const MIGRATED_FROM: &str = "bake:migrated-from";

/// On the permissions boundary `bake bootstrap` creates (never swept: it is not `MANAGED`).
pub const BOOTSTRAP: &str = "bake:bootstrap";
