//! IAM policy templates: `policies/builder.json.hbs` (the builder's temporary role) and
//! `policies/operator.json.hbs` (what a person or CI needs to run bake). Rendered with the JSON
//! engine, then parsed and checked as policy documents before anything uses them.

use std::path::{Path, PathBuf};

use handlebars::Handlebars;
use serde_json::Value as Json;

use super::problem::{display_path, Problem, Problems};
use crate::template::{self, Flavor};

pub const KINDS: &[&str] = &["builder", "operator", "roller", "boundary", "state"];

/// IAM's limit on a role's inline policies, whitespace excluded.
pub const INLINE_POLICY_LIMIT: usize = 10_240;
/// IAM's limit on a managed policy document, whitespace excluded.
pub const MANAGED_POLICY_LIMIT: usize = 6_144;

pub struct Policies {
    registry: Handlebars<'static>,
    files: Vec<(String, PathBuf)>,
}

impl Policies {
    pub fn load(root: &Path) -> Result<Policies, Problems> {
        let mut registry = template::registry(Flavor::Json);
        let mut problems = Problems::default();
        let mut files = Vec::new();
        for kind in KINDS {
            let path = root.join("policies").join(format!("{kind}.json.hbs"));
            let shown = display_path(root, &path);
            match std::fs::read_to_string(&path) {
                Ok(src) => {
                    if let Err(e) = registry.register_template_string(kind, src) {
                        let (line, why) = template::template_error_text(&e);
                        problems.push(Problem::new(&shown, "", why).at_line(line));
                    }
                    files.push((kind.to_string(), shown));
                }
                Err(e) => problems.push(Problem::new(&shown, "", format!("cannot read the policy template: {e}"))),
            }
        }
        problems.into_result(Policies { registry, files })
    }

    fn shown(&self, kind: &str) -> PathBuf {
        self.files.iter().find(|(k, _)| k == kind).map(|(_, p)| p.clone()).unwrap_or_else(|| PathBuf::from(kind))
    }

    /// Renders policy `kind` with `ctx` and checks it. The builder's policy may have no
    /// statement at all (the builder then gets no inline policy): `Ok(None)`.
    pub fn render(&self, kind: &str, ctx: &Json) -> Result<Option<Json>, Problem> {
        let shown = self.shown(kind);
        let text = self.registry.render(kind, ctx).map_err(|e| {
            let (line, why) = template::render_error_text(&e);
            Problem::new(&shown, "", why).at_line(line)
        })?;
        let text = strip_trailing_commas(&text);
        let doc: Json = serde_json::from_str(&text)
            .map_err(|e| Problem::new(&shown, "", format!("renders as invalid JSON: {e} (line {} of the rendered policy)", e.line())))?;
        let n = check_document(&doc).map_err(|why| Problem::new(&shown, "", format!("not a valid policy document: {why}")))?;
        let size = serde_json::to_string(&doc).map(|s| s.len()).unwrap_or(0);
        let limit = if kind == "builder" { INLINE_POLICY_LIMIT } else { MANAGED_POLICY_LIMIT };
        if size > limit {
            let split = if kind == "builder" || kind == "boundary" { "" } else { "; render one per role (--role) and attach several" };
            return Err(Problem::new(&shown, "", format!("renders to {size} characters; IAM allows {limit}{split}")));
        }
        if n == 0 {
            if kind == "builder" {
                return Ok(None);
            }
            return Err(Problem::new(&shown, "Statement", "not a valid policy document: it has no statement"));
        }
        Ok(Some(doc))
    }
}

impl Policies {
    /// The string values of `ctx` under the keys `under` that reach a `Resource` of policy `kind`
    /// as rendered: (JSON path such as `node.docker.registry.password_parameter`, value). Found by
    /// rendering once with every such string replaced by a marker; empty values are left out (the
    /// templates guard them with `{{#if}}`).
    pub fn values_in_resources(&self, kind: &str, ctx: &Json, under: &[&str]) -> Vec<(String, String)> {
        fn walk(v: &mut Json, path: String, markers: &mut Vec<(String, String, String)>) {
            match v {
                Json::String(s) if !s.is_empty() => {
                    let m = format!("bakemark{}x", markers.len());
                    markers.push((m.clone(), path, std::mem::replace(s, m)));
                }
                Json::Array(a) => {
                    for (i, x) in a.iter_mut().enumerate() {
                        walk(x, format!("{path}[{i}]"), markers);
                    }
                }
                Json::Object(o) => {
                    for (k, x) in o.iter_mut() {
                        walk(x, format!("{path}.{k}"), markers);
                    }
                }
                _ => {}
            }
        }
        let mut markers = Vec::new();
        let mut marked = ctx.clone();
        for key in under {
            if let Some(v) = marked.get_mut(*key) {
                walk(v, key.to_string(), &mut markers);
            }
        }
        let Ok(text) = self.registry.render(kind, &marked) else { return Vec::new() };
        let Ok(doc) = serde_json::from_str::<Json>(&strip_trailing_commas(&text)) else { return Vec::new() };
        let resources: Vec<String> = allowed_pairs(&doc).into_iter().map(|(_, r)| r).collect();
        markers.into_iter().filter(|(m, _, _)| resources.iter().any(|r| r.contains(m.as_str()))).map(|(_, path, value)| (path, value)).collect()
    }
}

/// Why a value must not become part of a policy's resource: it holds a wildcard or an empty
/// path segment, so the resource would name more than the one thing meant.
pub fn too_wide_for_a_resource(value: &str) -> Option<String> {
    if let Some(c) = value.chars().find(|c| *c == '*' || *c == '?') {
        return Some(format!("`{value}` holds the wildcard `{c}`; it reaches an IAM policy resource, which must name exactly one thing"));
    }
    if value.contains("${") {
        return Some(format!("`{value}` holds `${{`, an IAM policy variable; it reaches an IAM policy resource, which must name exactly one thing"));
    }
    if let Some(c) = value.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Some(format!(
            "`{}` holds `{}`; it reaches an IAM policy resource, which must name exactly one thing",
            value.escape_default(),
            c.escape_default()
        ));
    }
    let rest = match value.find("://") {
        Some(i) if value[..i].bytes().all(|b| b.is_ascii_alphanumeric()) => &value[i + 3..],
        _ => value,
    };
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains("//") || rest.ends_with('/') {
        return Some(format!("`{value}` has an empty path segment; it reaches an IAM policy resource, which must name exactly one thing"));
    }
    None
}

/// Removes a comma that stands (after white space) right before `]` or `}`, outside strings, so
/// templates may end each `{{#if}}`-guarded statement with a comma.
pub fn strip_trailing_commas(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let (mut in_str, mut esc) = (false, false);
    for (i, &c) in chars.iter().enumerate() {
        if in_str {
            out.push(c);
            if esc {
                esc = false;
            } else if c == '\\' {
                esc = true;
            } else if c == '"' {
                in_str = false;
            }
            continue;
        }
        if c == '"' {
            in_str = true;
        } else if c == ',' {
            let next = chars[i + 1..].iter().find(|c| !c.is_whitespace());
            if matches!(next, Some(']') | Some('}')) {
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// Checks the shape IAM requires of an identity policy; returns the number of statements.
pub fn check_document(doc: &Json) -> Result<usize, String> {
    let obj = doc.as_object().ok_or("the document must be a JSON object")?;
    for k in obj.keys() {
        if !["Version", "Id", "Statement"].contains(&k.as_str()) {
            return Err(format!("unknown top-level key {k}"));
        }
    }
    match obj.get("Version").and_then(Json::as_str) {
        Some("2012-10-17") => {}
        Some(v) => return Err(format!("Version is {v}; use 2012-10-17")),
        None => return Err("Version is missing (use 2012-10-17)".into()),
    }
    let statements: Vec<&Json> = match obj.get("Statement") {
        Some(Json::Array(a)) => a.iter().collect(),
        Some(s @ Json::Object(_)) => vec![s],
        Some(_) => return Err("Statement must be a list or an object".into()),
        None => return Err("Statement is missing".into()),
    };
    let mut sids = std::collections::BTreeSet::new();
    for (i, s) in statements.iter().enumerate() {
        let s = s.as_object().ok_or(format!("Statement[{i}] must be an object"))?;
        for k in s.keys() {
            if !["Sid", "Effect", "Action", "NotAction", "Resource", "NotResource", "Condition"].contains(&k.as_str()) {
                return Err(format!("Statement[{i}] has an unknown key {k}"));
            }
        }
        match s.get("Effect").and_then(Json::as_str) {
            Some("Allow") | Some("Deny") => {}
            _ => return Err(format!("Statement[{i}].Effect must be Allow or Deny")),
        }
        if s.contains_key("Action") == s.contains_key("NotAction") {
            return Err(format!("Statement[{i}] needs exactly one of Action or NotAction"));
        }
        if s.contains_key("Resource") == s.contains_key("NotResource") {
            return Err(format!("Statement[{i}] needs exactly one of Resource or NotResource"));
        }
        for key in ["Action", "NotAction", "Resource", "NotResource"] {
            let Some(v) = s.get(key) else { continue };
            let items: Vec<&Json> = match v {
                Json::String(_) => vec![v],
                Json::Array(a) if !a.is_empty() => a.iter().collect(),
                _ => return Err(format!("Statement[{i}].{key} must be a string or a non-empty list of strings")),
            };
            for it in items {
                let it = it.as_str().ok_or(format!("Statement[{i}].{key} must hold strings"))?;
                if key.ends_with("Action") && it != "*" && !it.contains(':') {
                    return Err(format!("Statement[{i}].{key}: `{it}` is not service:Action"));
                }
                if key.ends_with("Resource") && it != "*" && !it.starts_with("arn:") {
                    return Err(format!("Statement[{i}].{key}: `{it}` is not an ARN or *"));
                }
            }
        }
        if let Some(c) = s.get("Condition") {
            if !c.is_object() {
                return Err(format!("Statement[{i}].Condition must be an object"));
            }
        }
        if let Some(sid) = s.get("Sid") {
            let sid = sid.as_str().ok_or(format!("Statement[{i}].Sid must be a string"))?;
            if !sid.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(format!("Statement[{i}].Sid `{sid}` may hold only letters and digits"));
            }
            if !sids.insert(sid.to_string()) {
                return Err(format!("two statements have the Sid {sid}"));
            }
        }
    }
    Ok(statements.len())
}

/// The managed policy every builder role is created with (`bake bootstrap` creates it).
pub const BOUNDARY_NAME: &str = "bake-builder-boundary";
/// Where bake keeps its IAM things: builder roles, instance profiles, the boundary.
pub const BAKE_PATH: &str = "/bake/";
/// The names of the builder roles and instance profiles bake creates: `bake-` and the bake id
/// (`b-` and 12 hex digits). The operator policy creates and changes only these.
pub const BUILDER_NAMES: &str = "bake-b-*";
/// The AWS managed policy every builder role gets, for the SSM agent.
pub const SSM_CORE_POLICY_NAME: &str = "AmazonSSMManagedInstanceCore";

/// The boundary's ARN in `account` (`*` in a policy rendered for any account).
pub fn boundary_arn(account: &str) -> String {
    format!("arn:aws:iam::{account}:policy{BAKE_PATH}{BOUNDARY_NAME}")
}

/// Who publishes the images named by well-known public SSM parameters (their `ec2:Owner`).
const KNOWN_PARAMETER_OWNERS: &[(&str, &str)] = &[
    ("/aws/service/canonical/", "099720109477"),
    ("/aws/service/debian/", "136693071363"),
    ("/aws/service/ami-amazon-linux-latest/", "amazon"),
    ("/aws/service/ami-windows-latest/", "amazon"),
    ("/aws/service/ecs/", "amazon"),
    ("/aws/service/eks/", "amazon"),
    ("/aws/service/bottlerocket/", "amazon"),
];

/// The publisher of a well-known public parameter's images.
pub fn known_parameter_owner(name: &str) -> Option<&'static str> {
    KNOWN_PARAMETER_OWNERS.iter().find(|(prefix, _)| name.starts_with(prefix)).map(|(_, o)| *o)
}

fn push_unique(v: &mut Vec<String>, s: String) {
    if !v.contains(&s) {
        v.push(s);
    }
}

/// What the operator policy template sees: the needs of every role and env in scope (one role,
/// or every role), and how ownership is expressed (the role's tags, or any bake tags).
pub fn operator_context(
    project: &super::Project,
    role: Option<&str>,
    env: Option<&str>,
    account: Option<&str>,
    vars: &super::VarInputs,
) -> Result<Json, Problems> {
    operator_or_target_context(project, role, env, account, false, vars)
}

/// The context of `bake policy state`: bake.toml's shared state, its objects under the prefix,
/// its listing, its key; None when the project has none.
pub fn state_context(project: &super::Project, account: Option<&str>) -> Result<Option<Json>, Problems> {
    let account = account.unwrap_or("*");
    let Some(s) = super::state::load(&project.root)? else { return Ok(None) };
    let under = if s.prefix.is_empty() { String::new() } else { format!("{}/", s.prefix) };
    let kms = match &s.kms_key_id {
        None => String::new(),
        Some(k) if k.starts_with("arn:") && k.contains(":key/") => k.clone(),
        // An alias or a key id: any key of the account, used only through S3.
        Some(_) => format!("arn:aws:kms:*:{account}:key/*"),
    };
    Ok(Some(serde_json::json!({
        "state_url": format!("s3://{}/{under}", s.bucket),
        "state_object_arn": format!("arn:aws:s3:::{}/{under}*", s.bucket),
        "state_bucket_arn": format!("arn:aws:s3:::{}", s.bucket),
        "state_list_prefix": format!("{under}*"),
        "state_kms_arn": kms,
        "state_region": s.region.clone().unwrap_or_else(|| "*".into()),
    })))
}

/// The context of `bake policy target --account ID`: the roller's policy in that workload account,
/// for the roles (and envs) whose rollout.accounts name it, with their parameter published there.
pub fn target_context(project: &super::Project, role: Option<&str>, env: Option<&str>, account: &str, vars: &super::VarInputs) -> Result<Json, Problems> {
    operator_or_target_context(project, role, env, Some(account), true, vars)
}

fn operator_or_target_context(
    project: &super::Project,
    role: Option<&str>,
    env: Option<&str>,
    account: Option<&str>,
    target: bool,
    vars: &super::VarInputs,
) -> Result<Json, Problems> {
    use super::role::{SourceSpec, SubnetSpec};
    let account = account.unwrap_or("*");
    if account != "*" && (account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit())) {
        return Err(Problem::new("(command line)", "", format!("--account {account}: not a 12-digit account id")).into());
    }
    let names = match role {
        Some(r) => vec![r.to_string()],
        None => project.role_names().map_err(Problems::from)?,
    };
    let mut problems = Problems::default();
    let mut resolved = Vec::new();
    let mut scoped_envs: Vec<String> = Vec::new();
    for name in &names {
        let rf = match project.role(name) {
            Ok(rf) => rf,
            Err(p) => {
                problems.extend(p);
                continue;
            }
        };
        let envs: Vec<String> = match env {
            Some(e) => vec![e.to_string()],
            None => rf.envs.clone(),
        };
        // Every architecture's source, builder type and parameter.
        for e in &envs {
            match rf.resolve_all(e, vars) {
                Ok(rs) => resolved.extend(rs.into_iter().map(|r| (rf.file.shown.clone(), r))),
                Err(p) => problems.extend(p),
            }
        }
        if role.is_some() {
            scoped_envs = envs;
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    // A workload account's role serves only the roles that roll there.
    if target {
        resolved.retain(|(_, r)| r.rollout.accounts.iter().any(|a| a.id == account));
        if resolved.is_empty() {
            return Err(Problem::new(
                "(command line)",
                "",
                format!("--account {account}: no role{} lists it in rollout.accounts", role.map(|r| format!(" ({r})")).unwrap_or_default()),
            )
            .into());
        }
    }
    let mut assume_role_arns: Vec<String> = Vec::new();
    let mut target_parameter_arns: Vec<String> = Vec::new();
    let arn = |service: &str, rest: &str| format!("arn:aws:{service}:*:{account}:{rest}");
    // The account, in a condition value: the policy variable when the render is for any account.
    let account_or_variable = if account == "*" { "${aws:PrincipalAccount}".to_string() } else { account.to_string() };
    let mut source_owners = Vec::new();
    let mut launch_places = Vec::new();
    let mut source_parameter_arns = Vec::new();
    let mut own_parameter_arns = Vec::new();
    let mut launch_configuration_names = Vec::new();
    let mut alarm_arns: Vec<String> = Vec::new();
    let mut send_command_arns = vec!["arn:aws:ssm:*::document/AWS-RunShellScript".to_string()];
    // Roles, instance profiles and the boundary, all under bake's path.
    let mut identity_read_arns: Vec<String> =
        ["role", "instance-profile", "policy"].iter().map(|t| format!("arn:aws:iam::{account}:{t}{BAKE_PATH}*")).collect();
    let mut kms_key_arns = Vec::new();
    let mut kms_aliases = Vec::new();
    let mut sns_topic_arns = Vec::new();
    let mut share_accounts = Vec::new();
    let (mut copies, mut shares, mut deprecation, mut set_default_version, mut iam_write) = (false, false, false, false, false);
    let mut target_health = false;
    for (file, r) in &resolved {
        let problem = |key: &str, why: String| Problem::new(file, key, why);
        // Whose images a builder may start from.
        let owners: Vec<String> = match &r.source {
            SourceSpec::Ami { id } => {
                push_unique(&mut launch_places, format!("arn:aws:ec2:*::image/{id}"));
                Vec::new()
            }
            SourceSpec::Filter { .. } => r.source_owners.clone(),
            SourceSpec::SsmParameter { name } => {
                if name.starts_with("/aws/service/") {
                    push_unique(&mut source_parameter_arns, format!("arn:aws:ssm:*::parameter{name}"));
                } else if name.starts_with('/') {
                    push_unique(&mut source_parameter_arns, arn("ssm", &format!("parameter{name}")));
                } else {
                    push_unique(&mut source_parameter_arns, name.clone());
                }
                if !r.source_owners.is_empty() {
                    r.source_owners.clone()
                } else if let Some(o) = known_parameter_owner(name) {
                    vec![o.to_string()]
                } else {
                    problems.push(problem(
                        "source.owners",
                        format!("who publishes the images `{name}` names? Set source.owners (account ids, amazon, aws-marketplace or self): the operator policy launches only their images"),
                    ));
                    Vec::new()
                }
            }
        };
        for o in owners {
            // `self` is the account the policy is attached in.
            let o = if o == "self" { account_or_variable.clone() } else { o };
            push_unique(&mut source_owners, o);
        }
        match &r.builder.subnet {
            SubnetSpec::Id { id } => push_unique(&mut launch_places, arn("ec2", &format!("subnet/{id}"))),
            _ => push_unique(&mut launch_places, arn("ec2", "subnet/*")),
        }
        if r.builder.security_group_ids.is_empty() {
            // The temporary security group is made in the subnet's VPC.
            push_unique(&mut launch_places, arn("ec2", "vpc/*"));
        }
        for sg in &r.builder.security_group_ids {
            push_unique(&mut launch_places, arn("ec2", &format!("security-group/{sg}")));
        }
        match &r.builder.instance_profile {
            Some(_) => push_unique(&mut identity_read_arns, format!("arn:aws:iam::{account}:instance-profile/*")),
            None => iam_write = true,
        }
        for k in r.builder.kms_key_id.iter().chain(r.image.kms_keys.values()) {
            if let Some(alias) = k.strip_prefix("alias/") {
                push_unique(&mut kms_aliases, format!("alias/{alias}"));
            } else if let Some(i) = k.find(":alias/") {
                push_unique(&mut kms_aliases, k[i + 1..].to_string());
            } else if k.starts_with("arn:") {
                push_unique(&mut kms_key_arns, k.clone());
            } else {
                push_unique(&mut kms_key_arns, arn("kms", &format!("key/{k}")));
            }
        }
        // For every role, bake's own hierarchy is one pattern (each role publishes below
        // /bake/<role>/ there; validate).
        let published = match role {
            None if r.image.ssm_parameter.starts_with(BAKE_PATH) => format!("{BAKE_PATH}*"),
            _ => r.image.ssm_parameter.clone(),
        };
        push_unique(&mut own_parameter_arns, arn("ssm", &format!("parameter{published}")));
        // SSM authorizes the tags of PutParameter (ssm:AddTagsToResource) on `parameter/` + the
        // name as given, leading slash included.
        push_unique(&mut own_parameter_arns, arn("ssm", &format!("parameter/{published}")));
        copies |= !r.image.regions.is_empty();
        shares |= !(r.image.share_accounts.is_empty() && r.image.share_organizations.is_empty() && r.image.share_ous.is_empty());
        for a in &r.image.share_accounts {
            push_unique(&mut share_accounts, a.clone());
        }
        deprecation |= r.image.deprecate_after_days.is_some();
        set_default_version |= r.rollout.set_default_version || r.rollout.keep_version_alias;
        // Launch configurations bake makes are named <group>-<ami>-<roll id>.
        if role.is_none() || !r.rollout.group_tags.is_empty() {
            push_unique(&mut launch_configuration_names, "*-ami-*-b-*".to_string());
        }
        let mut groups = r.rollout.groups.clone();
        if groups.is_empty() && r.rollout.group_tags.is_empty() {
            groups.push(format!("{}_{}", r.name, r.env));
        }
        if role.is_some() {
            for g in groups {
                push_unique(&mut launch_configuration_names, format!("{g}-ami-*-b-*"));
            }
        }
        if let Some(b) = &r.builder.output.s3_bucket {
            push_unique(&mut send_command_arns, format!("arn:aws:s3:::{b}"));
        }
        if let Some(t) = &r.notify.sns_topic_arn {
            push_unique(&mut sns_topic_arns, t.clone());
        }
        // The alarms that gate its rolls, in whatever region it rolls.
        for a in &r.rollout.alarms {
            push_unique(&mut alarm_arns, arn("cloudwatch", &format!("alarm:{a}")));
        }
        // Target health of the canaries (ELBv2's Describe actions take no resource).
        target_health |= !r.rollout.target_groups.is_empty();
        for a in &r.rollout.accounts {
            push_unique(&mut assume_role_arns, a.role_arn.clone());
        }
        if target {
            let name = &r.image.ssm_parameter;
            push_unique(&mut target_parameter_arns, arn("ssm", &format!("parameter{name}")));
            push_unique(&mut target_parameter_arns, arn("ssm", &format!("parameter/{name}")));
        }
    }
    if target {
        assume_role_arns.clear();
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    // A specific launch configuration pattern is covered by the wildcard one.
    if launch_configuration_names.iter().any(|n| n == "*-ami-*-b-*") {
        launch_configuration_names.retain(|n| n == "*-ami-*-b-*");
    }
    let launch_configuration_arns: Vec<String> =
        launch_configuration_names.iter().map(|n| arn("autoscaling", &format!("launchConfiguration:*:launchConfigurationName/{n}"))).collect();
    if launch_places.iter().any(|p| p.ends_with(":subnet/*")) {
        launch_places.retain(|p| !p.contains(":subnet/") || p.ends_with(":subnet/*"));
    }
    let scope = match (role, env) {
        (Some(r), Some(e)) => format!("role {r} in env {e}"),
        (Some(r), None) => format!("role {r} in envs {}", scoped_envs.join(", ")),
        _ => "every role".to_string(),
    };
    Ok(serde_json::json!({
        "partition": "aws",
        "account": account,
        "scope": scope,
        "scoped": role.is_some(),
        "role": role.unwrap_or(""),
        "envs": scoped_envs,
        "builder_path": BAKE_PATH,
        "boundary_arn": boundary_arn(account),
        "account_or_variable": account_or_variable,
        "source_owners": source_owners,
        "launch_places": launch_places,
        "source_parameter_arns": source_parameter_arns,
        "own_parameter_arns": own_parameter_arns,
        "launch_configuration_arns": launch_configuration_arns,
        "launch_configuration_names": launch_configuration_names,
        "builder_name": BUILDER_NAMES,
        "send_command_arns": send_command_arns,
        "identity_read_arns": identity_read_arns,
        "kms_key_arns": kms_key_arns,
        "kms_aliases": kms_aliases,
        "sns_topic_arns": sns_topic_arns,
        "alarm_arns": alarm_arns,
        "target_health": target_health,
        "assume_role_arns": assume_role_arns,
        "target_parameter_arns": target_parameter_arns,
        "share_accounts": share_accounts,
        "copies": copies,
        "shares": shares,
        "deprecation": deprecation,
        "set_default_version": set_default_version,
        "iam_write": iam_write,
    }))
}

/// The statements of several builder policies as one list: statements with the same Sid, actions
/// and condition become one with their resources together; others keep their own (numbered) Sid.
pub fn union_of_statements(docs: &[Json]) -> Vec<Json> {
    let mut out: Vec<Json> = Vec::new();
    for doc in docs {
        let statements = match doc.get("Statement") {
            Some(Json::Array(a)) => a.clone(),
            Some(s @ Json::Object(_)) => vec![s.clone()],
            _ => continue,
        };
        for st in statements {
            let key = |s: &Json| (s.get("Effect").cloned(), s.get("Action").cloned(), s.get("Condition").cloned());
            let sid = st.get("Sid").and_then(Json::as_str).unwrap_or("Statement").to_string();
            let same = out.iter_mut().find(|o| {
                o.get("Sid").and_then(Json::as_str).map(|x| x.trim_end_matches(|c: char| c.is_ascii_digit()) == sid).unwrap_or(false) && key(o) == key(&st)
            });
            let resources = |s: &Json| -> Vec<Json> {
                match s.get("Resource") {
                    Some(Json::Array(a)) => a.clone(),
                    Some(v) => vec![v.clone()],
                    None => vec![],
                }
            };
            match same {
                Some(o) => {
                    let mut rs = resources(o);
                    for r in resources(&st) {
                        if !rs.contains(&r) {
                            rs.push(r);
                        }
                    }
                    o["Resource"] = if rs.len() == 1 { rs[0].clone() } else { Json::Array(rs) };
                }
                None => {
                    let taken = out
                        .iter()
                        .filter(|o| o.get("Sid").and_then(Json::as_str).map(|x| x.trim_end_matches(|c: char| c.is_ascii_digit()) == sid).unwrap_or(false))
                        .count();
                    let mut st = st.clone();
                    if taken > 0 {
                        st["Sid"] = Json::String(format!("{sid}{}", taken + 1));
                    }
                    out.push(st);
                }
            }
        }
    }
    out
}

/// What the boundary template sees: the union of every role's builder policy in every env.
pub fn boundary_context(project: &super::Project, account: Option<&str>, vars: &super::VarInputs) -> Result<Json, Problems> {
    let account = account.unwrap_or("*");
    let mut docs = Vec::new();
    let mut problems = Problems::default();
    let policies = project.policies()?;
    let mut cache = super::CookbookCache::default();
    for name in project.role_names().map_err(Problems::from)? {
        let rf = match project.role(&name) {
            Ok(rf) => rf,
            Err(p) => {
                problems.extend(p);
                continue;
            }
        };
        for env in rf.envs.clone() {
            match rf.resolve_all(&env, vars) {
                Ok(rs) => {
                    for r in rs {
                        match project.plan_with(&rf, &r, &mut cache, &policies) {
                            Ok(plan) => docs.extend(plan.builder.inline_policy),
                            Err(p) => problems.extend(p),
                        }
                    }
                }
                Err(p) => problems.extend(p),
            }
        }
    }
    problems.into_result(serde_json::json!({
        "partition": "aws",
        "account": account,
        "boundary_arn": boundary_arn(account),
        "builder_statements": union_of_statements(&docs),
    }))
}

/// Every (action, resource) pair a policy document allows, for containment checks: `Action` and
/// `Resource` lists expanded, conditions ignored.
pub fn allowed_pairs(doc: &Json) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let statements = match doc.get("Statement") {
        Some(Json::Array(a)) => a.clone(),
        Some(s @ Json::Object(_)) => vec![s.clone()],
        _ => return out,
    };
    let list = |v: Option<&Json>| -> Vec<String> {
        match v {
            Some(Json::String(s)) => vec![s.clone()],
            Some(Json::Array(a)) => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
            _ => vec![],
        }
    };
    for st in statements.iter().filter(|s| s.get("Effect").and_then(Json::as_str) == Some("Allow")) {
        for a in list(st.get("Action")) {
            for r in list(st.get("Resource")) {
                out.push((a.to_ascii_lowercase(), r));
            }
        }
    }
    out
}

/// The (action, resource) pairs of `wanted` that `boundary` does not allow.
pub fn beyond_boundary(wanted: &Json, boundary: &Json) -> Vec<(String, String)> {
    let have = allowed_pairs(boundary);
    allowed_pairs(wanted).into_iter().filter(|(a, r)| !have.iter().any(|(ha, hr)| wildcard_match(ha, a) && wildcard_match(hr, r))).collect()
}

/// IAM's wildcard match: `*` any run, `?` one character.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn trailing_commas_go_but_commas_in_strings_stay() {
        assert_eq!(strip_trailing_commas(r#"{"a": [1, 2, ], "b": "x, ]",}"#), r#"{"a": [1, 2 ], "b": "x, ]"}"#);
    }

    #[test]
    fn documents_are_checked() {
        let ok = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ec2:DescribeImages", "Resource": "*"}]});
        assert_eq!(check_document(&ok), Ok(1));
        let empty = json!({"Version": "2012-10-17", "Statement": []});
        assert_eq!(check_document(&empty), Ok(0));
        for bad in [
            json!({"Statement": []}),
            json!({"Version": "2008-10-17", "Statement": []}),
            json!({"Version": "2012-10-17"}),
            json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Resource": "*"}]}),
            json!({"Version": "2012-10-17", "Statement": [{"Effect": "Maybe", "Action": "s3:*", "Resource": "*"}]}),
            json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3", "Resource": "*"}]}),
            json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "bucket"}]}),
        ] {
            assert!(check_document(&bad).is_err(), "{bad}");
        }
    }
}
