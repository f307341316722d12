//! Variables, from lowest to highest precedence:
//! 1. the role's `[vars]` defaults, then its `[env.<env>.vars]`;
//! 2. `BAKE_VAR_<name>` environment variables;
//! 3. `--var-file FILE` (TOML, in the order given; a later file wins);
//! 4. `--var name=value` (in the order given; a later flag wins).
//!
//! Reading the environment and the files happens at the edge (the CLI); this module is pure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::problem::{display_path, Problem};

/// Variables given from outside the role, already read.
#[derive(Clone, Debug, Default)]
pub struct VarInputs {
    /// From `BAKE_VAR_<name>`.
    pub env: BTreeMap<String, String>,
    /// From each `--var-file`, in order.
    pub files: Vec<(PathBuf, BTreeMap<String, String>)>,
    /// From each `--var name=value`, in order.
    pub flags: Vec<(String, String)>,
}

pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl VarInputs {
    /// Collects `BAKE_VAR_*` from an environment listing.
    pub fn from_env<I: IntoIterator<Item = (String, String)>>(vars: I) -> BTreeMap<String, String> {
        vars.into_iter().filter_map(|(k, v)| k.strip_prefix("BAKE_VAR_").filter(|n| valid_name(n)).map(|n| (n.to_string(), v))).collect()
    }

    /// Parses one `--var name=value`.
    pub fn parse_flag(text: &str) -> Result<(String, String), String> {
        let (k, v) = text.split_once('=').ok_or_else(|| format!("--var {text}: expected name=value"))?;
        if !valid_name(k) {
            return Err(format!("--var {text}: `{k}` is not a variable name (letters, digits, _)"));
        }
        Ok((k.to_string(), v.to_string()))
    }

    /// Reads one `--var-file`: a TOML table of strings, numbers and booleans.
    pub fn read_file(root: &Path, path: &Path) -> Result<BTreeMap<String, String>, Problem> {
        let shown = display_path(root, path);
        let text = std::fs::read_to_string(path).map_err(|e| Problem::new(&shown, "", format!("cannot read the var file: {e}")))?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|s| super::tomlfile::line_of(&text, s.start));
            Problem::new(&shown, "", format!("not valid TOML: {}", e.message())).at_line(line)
        })?;
        table
            .into_iter()
            .map(|(k, v)| {
                if !valid_name(&k) {
                    return Err(Problem::new(&shown, &k, "not a variable name (letters, digits, _)"));
                }
                scalar(&v).map(|s| (k.clone(), s)).ok_or_else(|| Problem::new(&shown, &k, "a variable must be a string, number or boolean"))
            })
            .collect()
    }

    /// Merges role defaults (already env-merged) with the outside inputs.
    pub fn resolve(&self, defaults: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut out = defaults.clone();
        out.extend(self.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        for (_, f) in &self.files {
            out.extend(f.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        out.extend(self.flags.iter().cloned());
        out
    }
}

/// A TOML scalar as the string a variable holds.
pub fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn precedence_is_defaults_env_files_flags() {
        let inputs = VarInputs {
            env: m(&[("a", "env"), ("b", "env"), ("c", "env")]),
            files: vec![(PathBuf::from("one.toml"), m(&[("b", "file1"), ("c", "file1")])), (PathBuf::from("two.toml"), m(&[("c", "file2")]))],
            flags: vec![("d".into(), "flag1".into()), ("d".into(), "flag2".into())],
        };
        let got = inputs.resolve(&m(&[("a", "default"), ("z", "default")]));
        assert_eq!(got, m(&[("a", "env"), ("b", "file1"), ("c", "file2"), ("d", "flag2"), ("z", "default")]));
    }

    #[test]
    fn env_prefix_and_names() {
        let got = VarInputs::from_env(vec![
            ("BAKE_VAR_tag".to_string(), "v1".to_string()),
            ("BAKE_VAR_1bad".to_string(), "x".to_string()),
            ("HOME".to_string(), "/root".to_string()),
        ]);
        assert_eq!(got, m(&[("tag", "v1")]));
        assert_eq!(VarInputs::parse_flag("tag=a=b").unwrap(), ("tag".into(), "a=b".into()));
        assert!(VarInputs::parse_flag("tag").is_err());
        assert!(VarInputs::parse_flag("-x=1").is_err());
    }
}
