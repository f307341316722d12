//! IAM policy templates: `policies/builder.json.hbs` (the builder's temporary role) and
//! `policies/operator.json.hbs` (what a person or CI needs to run bake). Rendered with the JSON
//! engine, then parsed and checked as policy documents before anything uses them.

use std::path::{Path, PathBuf};

use handlebars::Handlebars;
use serde_json::Value as Json;

use super::problem::{display_path, Problem, Problems};
use crate::template::{self, Flavor};

pub const KINDS: &[&str] = &["builder", "operator"];

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
        let doc: Json = serde_json::from_str(&text).map_err(|e| {
            Problem::new(&shown, "", format!("renders as invalid JSON: {e} (line {} of the rendered policy)", e.line()))
        })?;
        let n = check_document(&doc).map_err(|why| Problem::new(&shown, "", format!("not a valid policy document: {why}")))?;
        let size = serde_json::to_string(&doc).map(|s| s.len()).unwrap_or(0);
        let limit = if kind == "builder" { INLINE_POLICY_LIMIT } else { MANAGED_POLICY_LIMIT };
        if size > limit {
            return Err(Problem::new(&shown, "", format!("renders to {size} characters; IAM allows {limit}")));
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

/// What the operator policy template sees: the whole project's needs, or one role's.
pub fn operator_context(
    project: &super::Project,
    role: Option<&str>,
    env: Option<&str>,
    account: Option<&str>,
    vars: &super::VarInputs,
) -> Result<Json, Problems> {
    use super::role::SourceSpec;
    let account = account.unwrap_or("*");
    if let Some(a) = Some(account).filter(|a| *a != "*") {
        if a.len() != 12 || !a.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Problem::new("(command line)", "", format!("--account {a}: not a 12-digit account id")).into());
        }
    }
    let mut scope = "every role".to_string();
    let mut parameters = vec!["/bake/*".to_string()];
    let mut source_parameters = vec!["/aws/service/*".to_string()];
    let mut kms_key_arns: Vec<String> = Vec::new();
    let mut regions: Vec<String> = Vec::new();
    if let Some(role) = role {
        let rf = project.role(role)?;
        let envs: Vec<String> = match env {
            Some(e) => vec![e.to_string()],
            None => rf.envs.clone(),
        };
        scope = format!("role {role} ({})", envs.join(", "));
        parameters.clear();
        source_parameters.clear();
        for e in &envs {
            let r = rf.resolve(e, vars)?;
            parameters.push(r.image.ssm_parameter.trim_start_matches('/').to_string());
            if let SourceSpec::SsmParameter { name } = &r.source {
                source_parameters.push(name.trim_start_matches('/').to_string());
            }
            let keys = r.builder.kms_key_id.iter().chain(r.image.kms_keys.values());
            kms_key_arns.extend(keys.filter(|k| k.starts_with("arn:") && k.contains(":key/")).cloned());
            regions.extend(r.image.regions.iter().cloned());
        }
        parameters.sort();
        parameters.dedup();
        source_parameters.sort();
        source_parameters.dedup();
        kms_key_arns.sort();
        kms_key_arns.dedup();
    } else {
        parameters = vec!["bake/*".to_string()];
        source_parameters = vec!["aws/service/*".to_string()];
    }
    Ok(serde_json::json!({
        "partition": "aws",
        "account": account,
        "region": "*",
        "role_path": "/bake/",
        "scope": scope,
        "parameters": parameters,
        "source_parameters": source_parameters,
        "kms_key_arns": kms_key_arns,
        "regions": regions,
    }))
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
