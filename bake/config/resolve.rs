//! From a role file and an env to a checked [`Role`]: merge the overlay, render variables into
//! strings, apply defaults, check every value. Pure.

use std::collections::BTreeMap;

use serde_json::json;

use super::duration::Secs;
use super::limits;
use super::role::*;
use super::tomlfile::KeyPath;
use super::vars::{scalar, VarInputs};
use super::{cookbook, list_or_none, Problem, Problems, RoleFile};
use crate::template;

/// Deep-merges `over` into `base`: tables merge key by key, everything else is replaced;
/// `source` is replaced whole (it names exactly one kind of source).
pub fn merge(base: &mut toml::Table, over: &toml::Table, top: bool) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) if !(top && k == "source") => merge(b, o, false),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Renders `{{…}}` in every string of `v` with the plain engine, except the keys in `skip`.
fn render_strings(v: &mut toml::Value, at: &KeyPath, ctx: &serde_json::Value, skip: &[&str], errs: &mut Vec<(KeyPath, String)>) {
    match v {
        toml::Value::String(s) if s.contains("{{") => match template::render_plain(s, ctx) {
            Ok(r) => *s = r,
            Err(e) => errs.push((at.clone(), var_message(&e))),
        },
        toml::Value::Array(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                render_strings(x, &at.index(i), ctx, skip, errs);
            }
        }
        toml::Value::Table(t) => {
            for (k, x) in t.iter_mut() {
                let p = at.key(k);
                if skip.contains(&p.to_string().as_str()) {
                    continue;
                }
                render_strings(x, &p, ctx, skip, errs);
            }
        }
        _ => {}
    }
}

fn var_message(e: &str) -> String {
    // "`vars.tag` is not set (strict mode)" → name the ways to set it.
    if let Some(rest) = e.strip_prefix("`vars.") {
        if let Some(name) = rest.split('`').next() {
            return format!("variable `{name}` is not set (give --var {name}=…, --var-file, BAKE_VAR_{name}, or a default in [vars])");
        }
    }
    e.to_string()
}

/// A region bake works in (limits::region_problem).
fn is_region(s: &str) -> bool {
    limits::region_problem(s).is_none()
}

fn region_problem(r: &str) -> String {
    limits::region_problem(r).unwrap_or_default()
}

fn is_id(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix).map(|h| (8..=17).contains(&h.len()) && h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())).unwrap_or(false)
}

/// AMI names: see limits::valid_ami_name.
pub fn valid_ami_name(s: &str) -> bool {
    limits::valid_ami_name(s)
}

/// S3's bucket naming rules (the common subset: no dots next to each other or to a dash).
pub fn valid_bucket_name(s: &str) -> bool {
    let b = s.as_bytes();
    (3..=63).contains(&b.len())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && !s.contains("..")
        && !s.contains(".-")
        && !s.contains("-.")
}

/// An image owner as EC2 names it: an account id, `amazon`, `aws-marketplace`, or `self`.
pub fn valid_owner(s: &str) -> bool {
    matches!(s, "amazon" | "aws-marketplace" | "self") || (s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()))
}

/// IAM names (roles, instance profiles): 1-128 of letters, digits and `+=,.@_-`.
pub fn valid_iam_name(s: &str) -> bool {
    (1..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
}

const VOLUME_TYPES: &[&str] = &["gp2", "gp3", "io1", "io2", "st1", "sc1", "standard"];
const ARCHES: &[&str] = &["x86_64", "arm64", "i386", "x86_64_mac", "arm64_mac"];

/// The architectures a role may bake (EC2's `ArchitectureValues` that Linux builders run).
pub const BAKED_ARCHES: &[&str] = &["x86_64", "arm64"];

/// A role in one env, for one of its architectures (`arch`; `None`: the first, or the role's only
/// one). See [`resolve_all`].
pub fn resolve(rf: &RoleFile, env: &str, inputs: &VarInputs) -> Result<Role, Problems> {
    resolve_arch(rf, env, inputs, None)
}

/// The role once per architecture it bakes (`[architectures]`), or once.
pub fn resolve_all(rf: &RoleFile, env: &str, inputs: &VarInputs) -> Result<Vec<Role>, Problems> {
    let first = resolve(rf, env, inputs)?;
    if first.architectures.len() <= 1 {
        return Ok(vec![first]);
    }
    let mut out = Vec::new();
    let mut problems = Problems::default();
    for a in first.architectures.clone() {
        match resolve_arch(rf, env, inputs, Some(&a)) {
            Ok(r) => out.push(r),
            Err(p) => problems.extend(p),
        }
    }
    // Each architecture's image needs its own parameter (and, checked with the name, its own name).
    if problems.is_empty() {
        let params: std::collections::BTreeSet<&str> = out.iter().map(|r| r.image.ssm_parameter.as_str()).collect();
        if params.len() < out.len() {
            problems.push(rf.problem_at(
                env,
                &KeyPath::root().key("image").key("ssm_parameter"),
                "with several architectures each image needs its own parameter: put {{arch}} in it",
            ));
        }
    }
    problems.into_result(out)
}

fn resolve_arch(rf: &RoleFile, env: &str, inputs: &VarInputs, arch: Option<&str>) -> Result<Role, Problems> {
    let Some(overlay) = rf.overlay(env) else {
        return Err(rf.file.problem(&KeyPath::root().key("env"), format!("no environment `{env}` in this role (it has: {})", list_or_none(&rf.envs))).into());
    };
    let mut merged = rf.file.table.clone();
    merged.remove("env");
    merge(&mut merged, overlay, true);

    let mut problems = Problems::default();
    let root = KeyPath::root();
    let p = |path: &KeyPath, msg: String| -> Problem { rf.problem_at(env, path, msg) };

    // Architectures: each bakes from its own source on its own instance type; the rest of the
    // role is shared. The chosen one's source and instance type stand in for [source] and
    // builder.instance_type.
    let mut architectures: Vec<String> = Vec::new();
    let mut chosen: Option<String> = None;
    let before_arch = problems.len();
    if let Some(a) = merged.remove("architectures") {
        let ap = root.key("architectures");
        match a {
            toml::Value::Table(t) if !t.is_empty() => {
                for (name, v) in &t {
                    if !BAKED_ARCHES.contains(&name.as_str()) {
                        problems
                            .push(p(&ap.key(name), format!("`{}` is not an architecture bake builds ({})", name.escape_default(), BAKED_ARCHES.join(", "))));
                    }
                    match v {
                        toml::Value::Table(e) => {
                            for k in e.keys().filter(|k| !["source", "instance_type"].contains(&k.as_str())) {
                                problems.push(p(&ap.key(name).key(k), "unknown key: an architecture has a source and an instance_type".into()));
                            }
                            if !e.contains_key("source") {
                                problems.push(p(&ap.key(name), "needs a source (ssm_parameter, filter or ami)".into()));
                            }
                        }
                        _ => problems.push(p(&ap.key(name), "must be a table: { source = { ... }, instance_type = \"...\" }".into())),
                    }
                }
                architectures = t.keys().cloned().collect();
                if merged.contains_key("source") {
                    problems.push(p(&root.key("source"), "with [architectures], each architecture names its own source".into()));
                }
                let pick = arch.map(str::to_string).unwrap_or_else(|| architectures[0].clone());
                if let Some(toml::Value::Table(e)) = t.get(&pick) {
                    if let Some(src) = e.get("source") {
                        merged.insert("source".into(), src.clone());
                    }
                    if let Some(it) = e.get("instance_type") {
                        let b = merged.entry("builder").or_insert_with(|| toml::Value::Table(Default::default()));
                        if let toml::Value::Table(b) = b {
                            b.insert("instance_type".into(), it.clone());
                        }
                    }
                }
                chosen = Some(pick);
            }
            toml::Value::Table(_) => problems.push(p(&ap, "must name at least one architecture: [architectures.x86_64], [architectures.arm64]".into())),
            _ => problems.push(p(&ap, "must be a table of architectures: [architectures.x86_64], [architectures.arm64]".into())),
        }
    }
    let several = architectures.len() > 1;
    let arch_reported = problems.len() > before_arch;

    // Variables, then every string rendered with them (the image name waits for build time).
    let defaults: BTreeMap<String, String> =
        merged.get("vars").and_then(|v| v.as_table()).map(|t| t.iter().filter_map(|(k, v)| scalar(v).map(|s| (k.clone(), s))).collect()).unwrap_or_default();
    let vars = inputs.resolve(&defaults);
    // `{{arch}}` exists only for a role that declares architectures (strict: elsewhere an error).
    let mut ctx = json!({"role": rf.name, "env": env, "vars": vars});
    if let Some(a) = &chosen {
        ctx["arch"] = json!(a);
    }
    let mut rendered = toml::Value::Table(merged);
    let mut errs = Vec::new();
    render_strings(&mut rendered, &root, &ctx, &["image.name", "vars"], &mut errs);
    for (path, msg) in errs {
        problems.push(p(&path, msg));
    }
    let toml::Value::Table(merged) = rendered else { unreachable!("a table stays a table") };

    macro_rules! section {
        ($key:literal, $ty:ty) => {
            match merged.get($key) {
                None => <$ty>::default(),
                Some(v) => match rf.file.typed::<$ty>(&root.key($key), v.clone()) {
                    Ok(t) => t,
                    Err(e) => {
                        problems.push(p(&root.key($key), e.message));
                        <$ty>::default()
                    }
                },
            }
        };
    }
    let description: String = section!("description", String);
    let run_list: Vec<String> = section!("run_list", Vec<String>);
    let source: SourceLayer = section!("source", SourceLayer);
    let builder: BuilderLayer = section!("builder", BuilderLayer);
    let image: ImageLayer = section!("image", ImageLayer);
    let rollout: RolloutLayer = section!("rollout", RolloutLayer);
    let notify: NotifyLayer = section!("notify", NotifyLayer);
    let attributes = match merged.get("attributes") {
        Some(toml::Value::Table(t)) => match cookbook::toml_to_json(t.clone()) {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        },
        _ => serde_json::Map::new(),
    };

    // run_list
    let rl = root.key("run_list");
    if !merged.contains_key("run_list") {
        problems.push(p(&root, "a role needs a run_list (the cookbooks to run, in order)".into()));
    } else if run_list.is_empty() {
        problems.push(p(&rl, "the run list is empty: name at least one cookbook".into()));
    }
    let mut seen = BTreeMap::new();
    for (i, c) in run_list.iter().enumerate() {
        if !cookbook::valid_name(c) {
            problems.push(p(&rl.index(i), format!("`{c}` is not a cookbook name")));
        } else if let Some(first) = seen.insert(c.clone(), i) {
            problems.push(p(&rl.index(i), format!("`{c}` is in the run list twice (run_list[{first}] and run_list[{i}])")));
        }
    }
    for k in attributes.keys() {
        if !run_list.is_empty() && !run_list.contains(k) {
            problems.push(p(&root.key("attributes").key(k), format!("no cookbook `{k}` in the run list ({})", run_list.join(", "))));
        }
    }

    // source: exactly one
    let sp = match &chosen {
        Some(a) => root.key("architectures").key(a).key("source"),
        None => root.key("source"),
    };
    let kinds = [source.ssm_parameter.is_some(), source.filter.is_some(), source.ami.is_some()];
    let mut source_owners = Vec::new();
    if let Some(owners) = &source.owners {
        if source.ssm_parameter.is_none() {
            let why =
                if source.filter.is_some() { "give the owners as source.filter.owners" } else { "only with ssm_parameter (a pinned ami is named by its id)" };
            problems.push(p(&sp.key("owners"), why.into()));
        }
        for (i, o) in owners.iter().enumerate() {
            if !valid_owner(o) {
                problems.push(p(&sp.key("owners").index(i), format!("`{o}` is not an image owner (a 12-digit account id, amazon, aws-marketplace or self)")));
            }
        }
        if owners.is_empty() {
            problems.push(p(&sp.key("owners"), "name at least one owner".into()));
        }
        source_owners = owners.clone();
    }
    let source_spec = match kinds.iter().filter(|k| **k).count() {
        1 => {
            if let Some(name) = &source.ssm_parameter {
                if let Some(why) = limits::source_parameter_problem(name) {
                    problems.push(p(&sp.key("ssm_parameter"), format!("`{}` {why}", name.chars().take(80).collect::<String>().escape_default())));
                }
                SourceSpec::SsmParameter { name: name.clone() }
            } else if let Some(id) = &source.ami {
                if !is_id(id, "ami-") {
                    problems.push(p(&sp.key("ami"), format!("`{id}` is not an AMI id (ami- and 8 or 17 hex digits)")));
                }
                SourceSpec::Ami { id: id.clone() }
            } else {
                let f = source.filter.clone().unwrap_or_default();
                let fp = sp.key("filter");
                let owners = f.owners.unwrap_or_default();
                if owners.is_empty() {
                    problems.push(p(&fp, "a filter needs owners (account ids, or amazon / aws-marketplace / self)".into()));
                }
                for (i, o) in owners.iter().enumerate() {
                    if !valid_owner(o) {
                        problems.push(p(
                            &fp.key("owners").index(i),
                            format!("`{o}` is not an image owner (a 12-digit account id, amazon, aws-marketplace or self)"),
                        ));
                    }
                }
                source_owners = owners.clone();
                let name = f.name.unwrap_or_default();
                if name.is_empty() {
                    problems.push(p(&fp, "a filter needs a name pattern (e.g. ubuntu/images/*ubuntu-noble-24.04-amd64-server-*)".into()));
                }
                // Under [architectures.<arch>] the filter's architecture is that one.
                let architecture = f.architecture.or_else(|| chosen.clone()).unwrap_or_else(|| "x86_64".into());
                if !ARCHES.contains(&architecture.as_str()) {
                    problems.push(p(&fp.key("architecture"), format!("`{architecture}` is not one of {}", ARCHES.join(", "))));
                } else if let Some(a) = chosen.as_ref().filter(|a| **a != architecture) {
                    problems.push(p(&fp.key("architecture"), format!("`{architecture}` under architectures.{a}: the source must be {a}")));
                }
                SourceSpec::Filter { owners, name, architecture }
            }
        }
        // An architecture without a source was reported as such.
        0 if arch_reported => SourceSpec::Ami { id: String::new() },
        0 => {
            problems.push(p(&sp, "a role needs a source: exactly one of ssm_parameter, filter or ami".into()));
            SourceSpec::Ami { id: String::new() }
        }
        _ => {
            problems.push(p(&sp, "give exactly one of ssm_parameter, filter or ami".into()));
            SourceSpec::Ami { id: String::new() }
        }
    };

    // builder
    let bp = root.key("builder");
    if let Some(r) = &builder.region {
        if !is_region(r) {
            problems.push(p(&bp.key("region"), region_problem(r)));
        }
    }
    let subnet = match (&builder.subnet_id, &builder.subnet_tags) {
        (Some(_), Some(_)) => {
            problems.push(p(&bp, "give subnet_id or subnet_tags, not both".into()));
            SubnetSpec::Default
        }
        (Some(id), None) => {
            if !is_id(id, "subnet-") {
                problems.push(p(&bp.key("subnet_id"), format!("`{id}` is not a subnet id")));
            }
            SubnetSpec::Id { id: id.clone() }
        }
        (None, Some(t)) if !t.is_empty() => {
            for (k, v) in t {
                if let Some(why) = limits::tag_problem(k, v) {
                    problems.push(p(&bp.key("subnet_tags").key(k), why));
                }
            }
            SubnetSpec::Tags { tags: t.clone() }
        }
        _ => SubnetSpec::Default,
    };
    for (i, sg) in builder.security_group_ids.iter().flatten().enumerate() {
        if !is_id(sg, "sg-") {
            problems.push(p(&bp.key("security_group_ids").index(i), format!("`{sg}` is not a security group id")));
        }
    }
    let vt = builder.root_volume_type.clone().unwrap_or_else(|| "gp3".into());
    if !VOLUME_TYPES.contains(&vt.as_str()) {
        problems.push(p(&bp.key("root_volume_type"), format!("`{vt}` is not one of {}", VOLUME_TYPES.join(", "))));
    }
    if let Some(s) = builder.root_volume_size {
        if !(1..=16_384).contains(&s) {
            problems.push(p(&bp.key("root_volume_size"), "must be between 1 and 16384 GiB".into()));
        }
    }
    let encrypted = builder.encrypted.unwrap_or(true);
    if builder.kms_key_id.is_some() && !encrypted {
        problems.push(p(&bp.key("kms_key_id"), "a KMS key needs encrypted = true".into()));
    }
    let instance_type = builder.instance_type.clone().unwrap_or_else(|| DEFAULT_INSTANCE_TYPE.into());
    if !limits::valid_instance_type(&instance_type) {
        problems.push(p(&bp.key("instance_type"), format!("`{instance_type}` is not an instance type (family.size, e.g. t3.small)")));
    }
    if let Some(k) = &builder.kms_key_id {
        if !limits::valid_kms_key(k) {
            problems.push(p(&bp.key("kms_key_id"), format!("`{k}` is not a KMS key (a key id, alias/NAME, or the ARN of either)")));
        }
    }
    for (key, v) in [("step_timeout", builder.step_timeout), ("ready_timeout", builder.ready_timeout), ("image_timeout", builder.image_timeout)] {
        if v == Some(Secs(0)) {
            problems.push(p(&bp.key(key), "must be longer than 0s".into()));
        }
    }
    if let Some(t) = builder.step_timeout.filter(|t| t.0 > limits::STEP_TIMEOUT_MAX) {
        problems.push(p(&bp.key("step_timeout"), format!("{t} is longer than SSM Run Command allows a command to run (48h)")));
    }
    for (key, v) in [("ready_timeout", builder.ready_timeout), ("image_timeout", builder.image_timeout)] {
        if let Some(t) = v.filter(|t| t.0 > limits::WAIT_MAX) {
            problems.push(p(&bp.key(key), format!("{t} is more than the week bake waits for anything")));
        }
    }
    if let Some(ip) = &builder.instance_profile {
        if !valid_iam_name(ip) {
            problems.push(p(&bp.key("instance_profile"), format!("`{ip}` is not an instance profile name (1-128 of letters, digits and +=,.@_-)")));
        }
    }
    let output = builder.output.clone().unwrap_or_default();
    let op = bp.key("output");
    if let Some(b) = &output.s3_bucket {
        if !valid_bucket_name(b) {
            problems.push(p(
                &op.key("s3_bucket"),
                format!("`{b}` is not an S3 bucket name (3-63 of a-z, 0-9, . and -, starting and ending with a letter or digit)"),
            ));
        }
    }
    let s3_prefix = output.s3_prefix.clone().unwrap_or_else(|| format!("bake/{}/{env}", rf.name));
    if s3_prefix.is_empty() || s3_prefix.starts_with('/') || s3_prefix.ends_with('/') || s3_prefix.len() > 500 {
        problems.push(p(&op.key("s3_prefix"), format!("`{s3_prefix}` must be 1-500 characters, not starting or ending with /")));
    } else if output.s3_prefix.is_some() && output.s3_bucket.is_none() {
        problems.push(p(&op.key("s3_prefix"), "needs s3_bucket".into()));
    }
    if let Some(g) = &output.log_group {
        if g.is_empty() || g.len() > 512 || !g.chars().all(|c| c.is_ascii_alphanumeric() || "._-/#".contains(c)) {
            problems.push(p(&op.key("log_group"), format!("`{g}` is not a CloudWatch Logs group name (1-512 of letters, digits, . _ - / #)")));
        }
    }
    let builder_spec = BuilderSpec {
        region: builder.region.clone(),
        instance_type,
        subnet,
        security_group_ids: builder.security_group_ids.clone().unwrap_or_default(),
        associate_public_ip: builder.associate_public_ip,
        root_volume_size: builder.root_volume_size,
        root_volume_type: vt,
        encrypted,
        kms_key_id: builder.kms_key_id.clone(),
        spot: builder.spot.unwrap_or(false),
        step_timeout: builder.step_timeout.unwrap_or(DEFAULT_STEP_TIMEOUT),
        ready_timeout: builder.ready_timeout.unwrap_or(DEFAULT_READY_TIMEOUT),
        image_timeout: builder.image_timeout.unwrap_or(DEFAULT_IMAGE_TIMEOUT),
        output: OutputSpec { s3_bucket: output.s3_bucket.clone(), s3_prefix, log_group: output.log_group.clone() },
        instance_profile: builder.instance_profile.clone(),
    };

    // image
    let ip = root.key("image");
    let name = image.name.clone().unwrap_or_else(|| if several { DEFAULT_IMAGE_NAME_ARCH.into() } else { DEFAULT_IMAGE_NAME.into() });
    if several && !name.contains("arch") {
        problems.push(p(&ip.key("name"), "with several architectures each image needs its own name: put {{arch}} in it".into()));
    }
    // Rendered for two bakes: the name must differ between them (a real {{timestamp}} or
    // {{bake_id}}, not the word), and be a valid AMI name for both.
    let sample = |timestamp: &str, bake_id: &str| {
        let mut v = json!({"role": rf.name, "env": env, "vars": vars, "timestamp": timestamp, "bake_id": bake_id});
        if let Some(a) = &chosen {
            v["arch"] = json!(a);
        }
        v
    };
    match (
        template::render_plain(&name, &sample("20261121T232813Z", "b-0123456789ab")),
        template::render_plain(&name, &sample("20991231T235959Z", "b-fedcba987654")),
    ) {
        (Ok(a), Ok(b)) if a == b => {
            problems.push(p(&ip.key("name"), "must use {{timestamp}} or {{bake_id}}, so that every bake's image has its own name".into()))
        }
        (Ok(a), Ok(b)) => {
            for n in [a, b] {
                if !valid_ami_name(&n) {
                    problems.push(p(
                        &ip.key("name"),
                        format!("renders as `{}`, not an AMI name (3-128 of letters, digits, ( ) [ ] space . / - ' @ _)", n.escape_default()),
                    ));
                    break;
                }
            }
        }
        (Err(e), _) | (_, Err(e)) => problems.push(p(&ip.key("name"), var_message(&e))),
    }
    let regions = image.regions.clone().unwrap_or_default();
    let mut seen_regions = std::collections::BTreeSet::new();
    for (i, r) in regions.iter().enumerate() {
        if !is_region(r) {
            problems.push(p(&ip.key("regions").index(i), region_problem(r)));
        } else if !seen_regions.insert(r) {
            problems.push(p(&ip.key("regions").index(i), format!("`{r}` is listed twice")));
        }
    }
    for (k, v) in image.kms_keys.iter().flatten() {
        if !is_region(k) {
            problems.push(p(&ip.key("kms_keys").key(k), region_problem(k)));
        } else if !limits::valid_kms_key(v) {
            problems.push(p(&ip.key("kms_keys").key(k), format!("`{v}` is not a KMS key (a key id, alias/NAME, or the ARN of either)")));
        }
    }
    for (i, a) in image.share_accounts.iter().flatten().enumerate() {
        if a.len() != 12 || !a.bytes().all(|b| b.is_ascii_digit()) {
            problems.push(p(&ip.key("share_accounts").index(i), format!("`{a}` is not a 12-digit account id")));
        }
    }
    for (i, a) in image.share_organizations.iter().flatten().enumerate() {
        if !(a.starts_with("arn:") && a.contains(":organization/o-")) {
            problems.push(p(&ip.key("share_organizations").index(i), format!("`{a}` is not an organization ARN")));
        }
    }
    for (i, a) in image.share_ous.iter().flatten().enumerate() {
        if !(a.starts_with("arn:") && a.contains(":ou/o-")) {
            problems.push(p(&ip.key("share_ous").index(i), format!("`{a}` is not an organizational unit ARN")));
        }
    }
    let tags = image.tags.clone().unwrap_or_default();
    for (k, v) in &tags {
        if k.to_ascii_lowercase().starts_with("bake:") {
            problems.push(p(&ip.key("tags").key(k), "tag keys starting with bake: are bake's own".into()));
        } else if let Some(why) = limits::tag_problem(k, v) {
            problems.push(p(&ip.key("tags").key(k), why));
        }
    }
    if tags.len() > limits::ROLE_TAGS {
        problems.push(p(&ip.key("tags"), format!("at most {} tags (EC2 allows 50; bake adds its own)", limits::ROLE_TAGS)));
    }
    match image.deprecate_after_days {
        Some(0) => problems.push(p(&ip.key("deprecate_after_days"), "must be at least 1".into())),
        Some(d) if d > limits::DEPRECATE_DAYS_MAX => {
            problems.push(p(&ip.key("deprecate_after_days"), format!("{d} days is more than the 10 years ({} days) AWS allows", limits::DEPRECATE_DAYS_MAX)))
        }
        _ => {}
    }
    let retire_after = image.retire_after.unwrap_or(Secs(limits::RETIRE_AFTER_DEFAULT));
    if retire_after.0 > limits::RETIRE_AFTER_MAX {
        problems.push(p(&ip.key("retire_after"), format!("{retire_after} is more than {} days", limits::RETIRE_AFTER_MAX / 86_400)));
    }
    let parameter = image
        .ssm_parameter
        .clone()
        .unwrap_or_else(|| template::render_plain(if several { DEFAULT_PARAMETER_ARCH } else { DEFAULT_PARAMETER }, &ctx).unwrap_or_default());
    if let Some(why) = limits::parameter_name_problem(&parameter) {
        problems.push(p(&ip.key("ssm_parameter"), format!("`{}` {why}", parameter.chars().take(80).collect::<String>().escape_default())));
    } else if parameter.starts_with("/bake/") && !parameter.starts_with(&format!("/bake/{}/", rf.name)) {
        problems.push(p(
            &ip.key("ssm_parameter"),
            format!("`{parameter}`: under /bake/ each role publishes only below /bake/{}/ (another role's parameter is its own)", rf.name),
        ));
    }
    let image_description = image.description.clone().unwrap_or_else(|| {
        // The default: the role's description, cut to what AWS keeps.
        format!("bake {} {}: {}", rf.name, env, description).chars().take(limits::AMI_DESCRIPTION).collect()
    });
    if image_description.chars().count() > limits::AMI_DESCRIPTION {
        problems.push(p(&ip.key("description"), format!("is {} characters; AWS allows {}", image_description.chars().count(), limits::AMI_DESCRIPTION)));
    }
    let mut image_spec = ImageSpec {
        name,
        description: image_description,
        tags,
        regions,
        kms_keys: image.kms_keys.clone().unwrap_or_default(),
        share_accounts: image.share_accounts.clone().unwrap_or_default(),
        share_organizations: image.share_organizations.clone().unwrap_or_default(),
        share_ous: image.share_ous.clone().unwrap_or_default(),
        deprecate_after_days: image.deprecate_after_days,
        keep: image.keep,
        retire_after,
        ssm_parameter: parameter,
    };

    // rollout
    let rp = root.key("rollout");
    let refresh = rollout.refresh.clone().unwrap_or_default();
    let refresh_main = refresh_spec(&refresh, None, &rp.key("refresh"), &p, &mut problems);
    let patch_spec = match &rollout.patch {
        Some(patch) => refresh_spec(patch, Some(&refresh_main), &rp.key("patch"), &p, &mut problems),
        None => refresh_main.clone(),
    };
    if rollout.concurrency == Some(0) {
        problems.push(p(&rp.key("concurrency"), "must be at least 1".into()));
    }
    if let Some(t) = rollout.canary_bake_time.filter(|t| t.0 > limits::WAIT_MAX) {
        problems.push(p(&rp.key("canary_bake_time"), format!("{t} is more than the week bake waits for anything")));
    }
    let mut seen_groups = std::collections::BTreeSet::new();
    for (key, names) in [("groups", &rollout.groups), ("canaries", &rollout.canaries)] {
        seen_groups.clear();
        for (i, g) in names.iter().flatten().enumerate() {
            if !limits::GROUP_NAME.contains(&g.len()) || g.trim() != g {
                problems.push(p(
                    &rp.key(key).index(i),
                    format!("`{}` is not an Auto Scaling group name (1-255 characters, no white space at either end)", g.escape_default()),
                ));
            } else if let Some(c) = g.chars().find(|c| "*?$".contains(*c) || c.is_control()) {
                problems.push(p(
                    &rp.key(key).index(i),
                    format!(
                        "`{}` holds `{}`: bake names groups exactly (it reaches the roller policy); select groups by tag with rollout.group_tags",
                        g.escape_default(),
                        c.escape_default()
                    ),
                ));
            } else if !seen_groups.insert(g.clone()) {
                problems.push(p(&rp.key(key).index(i), format!("`{g}` is listed twice")));
            }
        }
    }
    let alarms = rollout.alarms.clone().unwrap_or_default();
    if alarms.len() > limits::REFRESH_ALARMS {
        problems.push(p(&rp.key("alarms"), format!("{} alarms: an instance refresh takes at most {}", alarms.len(), limits::REFRESH_ALARMS)));
    }
    let mut seen_alarms = std::collections::BTreeSet::new();
    for (i, a) in alarms.iter().enumerate() {
        if !limits::ALARM_NAME.contains(&a.chars().count()) || a.chars().any(|c| c.is_control()) || a.trim() != a {
            problems.push(p(
                &rp.key("alarms").index(i),
                format!("`{}` is not a CloudWatch alarm name (1-255 characters, no control character, no white space at either end)", a.escape_default()),
            ));
        } else if a.contains('*') || a.contains('?') {
            problems.push(p(&rp.key("alarms").index(i), format!("`{a}` holds a wildcard: name each alarm exactly")));
        } else if !seen_alarms.insert(a.clone()) {
            problems.push(p(&rp.key("alarms").index(i), format!("`{a}` is listed twice")));
        }
    }
    let narrowed = rollout.regions.clone().unwrap_or_default();
    let role_regions = image.regions.clone().unwrap_or_default();
    let mut seen = std::collections::BTreeSet::new();
    for (i, r) in narrowed.iter().enumerate() {
        let home = builder.region.as_ref();
        if !is_region(r) {
            problems.push(p(&rp.key("regions").index(i), region_problem(r)));
        } else if !seen.insert(r) {
            problems.push(p(&rp.key("regions").index(i), format!("`{r}` is listed twice")));
        } else if home.is_some_and(|h| h != r) && !role_regions.contains(r) {
            problems.push(p(
                &rp.key("regions").index(i),
                format!("`{r}` has no copy of the image: roll the build region or one of image.regions ({})", role_regions.join(", ")),
            ));
        }
    }
    if rollout.regions.as_ref().is_some_and(|r| r.is_empty()) {
        problems.push(p(&rp.key("regions"), "is empty: leave it out to roll every region where the image is".into()));
    }
    let target_groups = rollout.target_groups.clone().unwrap_or_default();
    if rollout.target_groups.is_some() && target_groups.is_empty() {
        problems.push(p(&rp.key("target_groups"), "is empty: leave it out, or name the target groups to watch".into()));
    } else if target_groups.len() > limits::TARGET_GROUPS {
        problems.push(p(&rp.key("target_groups"), format!("{} target groups: bake watches at most {}", target_groups.len(), limits::TARGET_GROUPS)));
    } else if !target_groups.is_empty() && (rollout.canaries.as_ref().is_none_or(|c| c.is_empty()) || rollout.canary_bake_time.is_none_or(|t| t.0 == 0)) {
        problems.push(p(&rp.key("target_groups"), "are watched during the canaries' bake time: set rollout.canaries and rollout.canary_bake_time too".into()));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, a) in target_groups.iter().enumerate() {
        if let Some(why) = limits::target_group_arn_problem(a) {
            problems.push(p(&rp.key("target_groups").index(i), why));
        } else if !seen.insert(a.clone()) {
            problems.push(p(&rp.key("target_groups").index(i), format!("`{a}` is listed twice")));
        }
    }
    // Workload accounts: each id, the role assumed there, its regions (where the image is).
    let mut accounts = Vec::new();
    if rollout.accounts.as_ref().is_some_and(|a| a.is_empty()) {
        problems.push(p(&rp.key("accounts"), "is empty: leave it out, or give each account's role_arn".into()));
    }
    if rollout.accounts.as_ref().is_some_and(|a| a.len() > limits::ROLL_ACCOUNTS) {
        problems.push(p(&rp.key("accounts"), format!("bake rolls at most {} other accounts in one roll", limits::ROLL_ACCOUNTS)));
    }
    for (id, a) in rollout.accounts.iter().flatten() {
        let ap = rp.key("accounts").key(id);
        if !limits::is_account_id(id) {
            problems.push(p(&ap, format!("`{}` is not a 12-digit account id", id.escape_default())));
            continue;
        }
        let role_arn = match &a.role_arn {
            None => {
                problems.push(p(
                    &ap.key("role_arn"),
                    "is missing: the ARN of the role bake assumes in that account (bake policy target prints what it needs)".into(),
                ));
                continue;
            }
            Some(r) => r.clone(),
        };
        if let Some(why) = limits::role_arn_problem(&role_arn, id) {
            problems.push(p(&ap.key("role_arn"), why));
        }
        if let Some(why) = a.external_id.as_deref().and_then(limits::external_id_problem) {
            problems.push(p(&ap.key("external_id"), why));
        }
        let regions = a.regions.clone().unwrap_or_default();
        if a.regions.as_ref().is_some_and(|r| r.is_empty()) {
            problems.push(p(&ap.key("regions"), "is empty: leave it out to roll every region the roll covers".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, r) in regions.iter().enumerate() {
            if !is_region(r) {
                problems.push(p(&ap.key("regions").index(i), region_problem(r)));
            } else if !seen.insert(r) {
                problems.push(p(&ap.key("regions").index(i), format!("`{r}` is listed twice")));
            } else if builder.region.as_ref().is_some_and(|h| h != r) && !role_regions.contains(r) {
                problems.push(p(
                    &ap.key("regions").index(i),
                    format!("`{r}` has no copy of the image: the build region or one of image.regions ({})", role_regions.join(", ")),
                ));
            } else if !narrowed.is_empty() && !narrowed.contains(r) {
                problems.push(p(&ap.key("regions").index(i), format!("`{r}` is not one of rollout.regions ({})", narrowed.join(", "))));
            }
        }
        accounts.push(TargetAccount { id: id.clone(), role_arn, external_id: a.external_id.clone(), regions });
    }
    // Every account the roll covers can launch the image: it is shared with them.
    for a in &accounts {
        if !image_spec.share_accounts.contains(&a.id) {
            image_spec.share_accounts.push(a.id.clone());
        }
    }
    // An image encrypted with the AWS managed key (aws/ebs) cannot be shared: "You can't share
    // snapshots that are encrypted with the default AWS managed key" (EBS user guide). Every
    // region's image needs a customer managed key the accounts may use.
    let shared = !(image_spec.share_accounts.is_empty() && image_spec.share_organizations.is_empty() && image_spec.share_ous.is_empty());
    if shared && encrypted {
        let why =
            "shares an image encrypted with the AWS managed key (aws/ebs), which other accounts cannot use: set a customer managed key the accounts may use";
        let sharing_key = if rollout.accounts.is_some() && image.share_accounts.is_none() { "rollout.accounts" } else { "image.share_accounts" };
        if builder.kms_key_id.is_none() {
            problems.push(p(&bp.key("kms_key_id"), format!("is missing: {sharing_key} {why} (builder.kms_key_id)")));
        }
        for r in &role_regions {
            if !image_spec.kms_keys.contains_key(r) {
                problems.push(p(&ip.key("kms_keys").key(r), format!("is missing: {sharing_key} {why} in {r} too (KMS keys are regional)")));
            }
        }
    }
    // Canaries are among the targets; with only names (no tag filter) that can be checked here.
    for (k, v) in rollout.group_tags.iter().flatten() {
        if let Some(why) = limits::tag_problem(k, v) {
            problems.push(p(&rp.key("group_tags").key(k), why));
        }
    }
    if let (Some(groups), None) = (&rollout.groups, &rollout.group_tags) {
        for (i, c) in rollout.canaries.iter().flatten().enumerate() {
            if !groups.is_empty() && !groups.contains(c) {
                problems.push(p(&rp.key("canaries").index(i), format!("`{c}` is not one of rollout.groups ({})", groups.join(", "))));
            }
        }
    }
    let rollout_spec = RolloutSpec {
        groups: rollout.groups.clone().unwrap_or_default(),
        group_tags: rollout.group_tags.clone().unwrap_or_default(),
        canaries: rollout.canaries.clone().unwrap_or_default(),
        canary_bake_time: rollout.canary_bake_time.unwrap_or_default(),
        concurrency: rollout.concurrency.unwrap_or(4),
        set_default_version: rollout.set_default_version.unwrap_or(false),
        keep_version_alias: rollout.keep_version_alias.unwrap_or(false),
        keep_launch_configurations: rollout.keep_launch_configurations.unwrap_or(3),
        alarms,
        regions: narrowed,
        target_groups,
        accounts,
        refresh: refresh_main,
        patch_refresh: patch_spec,
    };

    // notify
    let np = root.key("notify");
    let on = notify.on.clone().unwrap_or_else(|| vec!["success".into(), "failure".into()]);
    for (i, o) in on.iter().enumerate() {
        if o != "success" && o != "failure" {
            problems.push(p(&np.key("on").index(i), format!("`{o}` is not one of success, failure")));
        }
    }
    if let Some(u) = &notify.webhook_url {
        if let Some(why) = limits::webhook_problem(u) {
            problems.push(p(&np.key("webhook_url"), why));
        }
    }
    if let Some(a) = &notify.sns_topic_arn {
        if !limits::valid_sns_topic_arn(a) {
            problems.push(p(&np.key("sns_topic_arn"), format!("`{a}` is not an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)")));
        }
    }

    problems.into_result(Role {
        name: rf.name.clone(),
        env: env.to_string(),
        file: rf.file.shown.clone(),
        description,
        run_list,
        source: source_spec,
        source_owners,
        builder: builder_spec,
        image: image_spec,
        attributes,
        rollout: rollout_spec,
        notify: NotifySpec { sns_topic_arn: notify.sns_topic_arn, webhook_url: notify.webhook_url, on },
        vars,
        arch: chosen,
        architectures,
    })
}

fn refresh_spec(l: &RefreshLayer, base: Option<&RefreshSpec>, at: &KeyPath, p: &dyn Fn(&KeyPath, String) -> Problem, problems: &mut Problems) -> RefreshSpec {
    let d = base.cloned().unwrap_or(RefreshSpec {
        min_healthy_percentage: 90,
        max_healthy_percentage: None,
        instance_warmup: None,
        checkpoint_percentages: Vec::new(),
        checkpoint_delay: None,
        bake_time: None,
        skip_matching: true,
        auto_rollback: true,
        protected_instances: "refresh".into(),
    });
    let spec = RefreshSpec {
        min_healthy_percentage: l.min_healthy_percentage.unwrap_or(d.min_healthy_percentage),
        max_healthy_percentage: l.max_healthy_percentage.or(d.max_healthy_percentage),
        instance_warmup: l.instance_warmup.or(d.instance_warmup),
        checkpoint_percentages: l.checkpoint_percentages.clone().unwrap_or(d.checkpoint_percentages),
        checkpoint_delay: l.checkpoint_delay.or(d.checkpoint_delay),
        bake_time: l.bake_time.or(d.bake_time),
        skip_matching: l.skip_matching.unwrap_or(d.skip_matching),
        auto_rollback: l.auto_rollback.unwrap_or(d.auto_rollback),
        protected_instances: l.protected_instances.clone().unwrap_or(d.protected_instances),
    };
    if !["refresh", "ignore", "wait"].contains(&spec.protected_instances.as_str()) {
        problems.push(p(&at.key("protected_instances"), format!("`{}` is not one of refresh, ignore, wait", spec.protected_instances)));
    }
    if spec.min_healthy_percentage > 100 {
        problems.push(p(&at.key("min_healthy_percentage"), "must be between 0 and 100".into()));
    }
    if let Some(m) = spec.max_healthy_percentage {
        if !(100..=200).contains(&m) {
            problems.push(p(&at.key("max_healthy_percentage"), "must be between 100 and 200".into()));
        } else if m - spec.min_healthy_percentage.min(m) > 100 {
            problems.push(p(&at.key("max_healthy_percentage"), "may exceed min_healthy_percentage by at most 100".into()));
        }
    }
    let cps = &spec.checkpoint_percentages;
    if cps.iter().any(|c| !(1..=100).contains(c)) || cps.windows(2).any(|w| w[0] >= w[1]) {
        problems.push(p(&at.key("checkpoint_percentages"), "must rise strictly, each between 1 and 100".into()));
    } else if cps.last().is_some_and(|c| *c != 100) {
        // AWS stops a refresh at its last checkpoint and calls it Successful: part of the group
        // would stay on the old image.
        problems.push(p(
            &at.key("checkpoint_percentages"),
            "must end at 100: AWS stops a refresh at its last checkpoint (and calls it successful), leaving the rest of the group on the old image".into(),
        ));
    }
    if let Some(d) = spec.checkpoint_delay.filter(|d| d.0 > limits::CHECKPOINT_DELAY_MAX) {
        problems.push(p(&at.key("checkpoint_delay"), format!("{d} is more than the 48h AWS allows")));
    }
    if let Some(b) = spec.bake_time.filter(|b| b.0 > limits::BAKE_TIME_MAX) {
        problems.push(p(&at.key("bake_time"), format!("{b} is more than the 48h AWS allows")));
    }
    if let Some(w) = spec.instance_warmup.filter(|w| w.0 > limits::WAIT_MAX) {
        problems.push(p(&at.key("instance_warmup"), format!("{w} is more than the week bake waits for anything")));
    }
    if l.checkpoint_delay.is_some() && spec.checkpoint_percentages.is_empty() {
        problems.push(p(&at.key("checkpoint_delay"), "only with checkpoint_percentages (AWS refuses a delay without checkpoints)".into()));
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> toml::Table {
        toml::from_str(s).unwrap()
    }

    #[test]
    fn overlay_merges_tables_and_replaces_the_rest() {
        let mut base = t(r#"
            run_list = ["base", "docker"]
            [builder]
            instance_type = "t3.small"
            root_volume_size = 8
            [attributes.docker]
            data_root = "/var/lib/docker"
            log = { max_size = "10m", max_file = 3 }
            [source]
            ssm_parameter = "/p"
        "#);
        let over = t(r#"
            run_list = ["base"]
            [builder]
            instance_type = "m6i.large"
            [attributes.docker]
            log = { max_file = 5 }
            [source]
            ami = "ami-12345678"
        "#);
        merge(&mut base, &over, true);
        assert_eq!(base["run_list"].as_array().unwrap().len(), 1);
        assert_eq!(base["builder"]["instance_type"].as_str(), Some("m6i.large"));
        assert_eq!(base["builder"]["root_volume_size"].as_integer(), Some(8));
        assert_eq!(base["attributes"]["docker"]["data_root"].as_str(), Some("/var/lib/docker"));
        assert_eq!(base["attributes"]["docker"]["log"]["max_size"].as_str(), Some("10m"));
        assert_eq!(base["attributes"]["docker"]["log"]["max_file"].as_integer(), Some(5));
        // source replaced whole, so the result still names exactly one kind
        assert!(base["source"].get("ssm_parameter").is_none());
        assert_eq!(base["source"]["ami"].as_str(), Some("ami-12345678"));
    }

    #[test]
    fn names_and_ids() {
        assert!(is_region("us-east-1") && !is_region("us-gov-west-1") && !is_region("cn-north-1") && is_region("ap-southeast-4"));
        assert!(!is_region("useast1") && !is_region("us-east") && !is_region("US-east-1") && !is_region("us-east-99"));
        assert!(is_id("ami-0123456789abcdef0", "ami-") && is_id("ami-12345678", "ami-"));
        assert!(!is_id("ami-XYZ", "ami-") && !is_id("ami-0123456789ABCDEF0", "ami-"));
        assert!(valid_ami_name("boxoffice-staging-20261121T232813Z"));
        assert!(!valid_ami_name("a{b}") && !valid_ami_name("ab"));
    }
}
