//! Configuration a team writes: roles, cookbooks, policies. Loading reads files; everything
//! after loading is pure. Problems always name the file and key.

pub mod checks;
pub mod cookbook;
pub mod duration;
pub mod limits;
pub mod policy;
pub mod problem;
mod resolve;
pub mod role;
pub mod state;
pub mod tomlfile;
pub mod vars;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use cookbook::{Cookbook, Step};
pub use duration::Secs;
pub use policy::Policies;
pub use problem::{Problem, Problems};
pub use role::Role;
pub use tomlfile::{KeyPath, TomlFile};
pub use vars::VarInputs;

/// An S3 bucket name (resolve.rs's check, shared with bake.toml).
pub(crate) fn resolve_bucket_name(s: &str) -> bool {
    resolve::valid_bucket_name(s)
}

use role::{BuilderLayer, ImageLayer, NotifyLayer, RolloutLayer, SourceLayer, SECTIONS};

/// A bake project: the folder holding `roles/`, `cookbooks/` and `policies/`.
#[derive(Clone, Debug)]
pub struct Project {
    pub root: PathBuf,
}

/// A role file, parsed and checked section by section (base and every env overlay).
pub struct RoleFile {
    pub name: String,
    pub file: TomlFile,
    /// The declared environments, sorted.
    pub envs: Vec<String>,
}

impl Project {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Project { root: root.into() }
    }

    fn list(&self, folder: &str, want_dir: bool, suffix: &str) -> Result<Vec<String>, Problem> {
        let dir = self.root.join(folder);
        let shown = problem::display_path(&self.root, &dir);
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| Problem::new(&shown, "", format!("cannot read the folder (is --root {} a bake project?): {e}", self.root.display())))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Problem::new(&shown, "", format!("cannot read the folder: {e}")))?;
            let path = entry.path();
            let Some(fname) = path.file_name().and_then(|f| f.to_str()) else { continue };
            if want_dir {
                if path.is_dir() {
                    names.push(fname.to_string());
                }
            } else if let Some(stem) = fname.strip_suffix(suffix) {
                if path.is_file() {
                    names.push(stem.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// Every role, by file name (`roles/<name>.toml`).
    pub fn role_names(&self) -> Result<Vec<String>, Problem> {
        self.list("roles", false, ".toml")
    }

    /// Every cookbook folder.
    pub fn cookbook_names(&self) -> Result<Vec<String>, Problem> {
        self.list("cookbooks", true, "")
    }

    pub fn role(&self, name: &str) -> Result<RoleFile, Problems> {
        RoleFile::load(&self.root, name)
    }

    pub fn cookbook(&self, name: &str) -> Result<Cookbook, Problems> {
        Cookbook::load(&self.root, name)
    }

    pub fn policies(&self) -> Result<Policies, Problems> {
        Policies::load(&self.root)
    }
}

/// Cookbooks loaded so far, with their problems.
#[derive(Default)]
pub struct CookbookCache {
    loaded: BTreeMap<String, Result<Cookbook, Problems>>,
}

impl CookbookCache {
    pub fn get(&mut self, project: &Project, name: &str) -> &Result<Cookbook, Problems> {
        self.loaded.entry(name.to_string()).or_insert_with(|| project.cookbook(name))
    }
}

fn check_section(file: &TomlFile, at: &KeyPath, key: &str, v: &toml::Value) -> Result<(), Problem> {
    let at = at.key(key);
    let v = v.clone();
    match key {
        "description" => file.typed::<String>(&at, v).map(drop),
        "run_list" => file.typed::<Vec<String>>(&at, v).map(drop),
        "source" => file.typed::<SourceLayer>(&at, v).map(drop),
        "builder" => file.typed::<BuilderLayer>(&at, v).map(drop),
        "image" => file.typed::<ImageLayer>(&at, v).map(drop),
        "attributes" => file.typed::<toml::Table>(&at, v).map(drop),
        "rollout" => file.typed::<RolloutLayer>(&at, v).map(drop),
        "notify" => file.typed::<NotifyLayer>(&at, v).map(drop),
        "vars" => {
            let t = file.typed::<toml::Table>(&at, v)?;
            for (k, v) in &t {
                if !vars::valid_name(k) {
                    return Err(file.problem(&at.key(k), "not a variable name (letters, digits, _)"));
                }
                if vars::scalar(v).is_none() {
                    return Err(file.problem(&at.key(k), "a variable must be a string, number or boolean"));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn check_layer(file: &TomlFile, at: &KeyPath, table: &toml::Table, allow_env: bool, problems: &mut Problems) {
    for (k, v) in table {
        if !SECTIONS.contains(&k.as_str()) || (k == "env" && !allow_env) {
            let msg = if k == "env" {
                "env overlays cannot nest".to_string()
            } else {
                let expected: Vec<&str> = SECTIONS.iter().copied().filter(|s| allow_env || *s != "env").collect();
                format!("unknown key (expected one of {})", expected.join(", "))
            };
            problems.push(file.problem(&at.key(k), msg));
            continue;
        }
        if let Err(p) = check_section(file, at, k, v) {
            problems.push(p);
        }
    }
}

impl RoleFile {
    pub fn load(root: &Path, name: &str) -> Result<RoleFile, Problems> {
        let path = root.join("roles").join(format!("{name}.toml"));
        let shown = problem::display_path(root, &path);
        if !path.is_file() {
            let known = Project::new(root).role_names().unwrap_or_default();
            return Err(Problem::new(&shown, "", format!("no such role (roles: {})", list_or_none(&known))).into());
        }
        if !cookbook::valid_name(name) {
            return Err(Problem::new(&shown, "", "a role name may hold only a-z, 0-9, - and _").into());
        }
        let file = TomlFile::load(root, &path).map_err(Problems::from)?;
        let mut problems = Problems::default();
        check_layer(&file, &KeyPath::root(), &file.table, true, &mut problems);
        let mut envs = Vec::new();
        if let Some(envt) = file.table.get("env") {
            match envt {
                toml::Value::Table(t) => {
                    for (env, overlay) in t {
                        let at = KeyPath::root().key("env").key(env);
                        if !cookbook::valid_name(env) {
                            problems.push(file.problem(&at, "an env name may hold only a-z, 0-9, - and _"));
                            continue;
                        }
                        match overlay {
                            toml::Value::Table(o) => check_layer(&file, &at, o, false, &mut problems),
                            _ => problems.push(file.problem(&at, "wrong type: expected a table [env.<name>]")),
                        }
                        envs.push(env.clone());
                    }
                }
                _ => problems.push(file.problem(&KeyPath::root().key("env"), "wrong type: expected [env.<name>] tables")),
            }
        }
        if envs.is_empty() && problems.is_empty() {
            problems.push(file.problem(&KeyPath::root(), "a role needs at least one environment: add an [env.<name>] table (e.g. [env.staging])"));
        }
        envs.sort();
        problems.into_result(RoleFile { name: name.to_string(), file, envs })
    }

    /// The overlay of `env`, if declared.
    pub fn overlay(&self, env: &str) -> Option<&toml::Table> {
        self.file.table.get("env")?.get(env)?.as_table()
    }

    /// A problem at `path` (a key of the merged role), attributed to the env overlay when the
    /// overlay sets it, else to the base.
    pub fn problem_at(&self, env: &str, path: &KeyPath, message: impl Into<String>) -> Problem {
        let in_overlay = self.overlay(env).map(|o| has_path(o, path)).unwrap_or(false);
        if in_overlay {
            let mut full = KeyPath::root().key("env").key(env);
            full.0.extend(path.0.iter().cloned());
            self.file.problem(&full, message)
        } else {
            self.file.problem(path, message)
        }
    }

    pub fn resolve(&self, env: &str, inputs: &VarInputs) -> Result<Role, Problems> {
        resolve::resolve(self, env, inputs)
    }

    /// The role once per architecture it bakes.
    pub fn resolve_all(&self, env: &str, inputs: &VarInputs) -> Result<Vec<Role>, Problems> {
        resolve::resolve_all(self, env, inputs)
    }
}

fn has_path(t: &toml::Table, path: &KeyPath) -> bool {
    let mut cur: Option<&toml::Value> = None;
    for (i, seg) in path.0.iter().enumerate() {
        let next = match (seg, cur) {
            (tomlfile::Seg::Key(k), None) if i == 0 => t.get(k),
            (tomlfile::Seg::Key(k), Some(toml::Value::Table(tt))) => tt.get(k),
            (tomlfile::Seg::Index(n), Some(toml::Value::Array(a))) => a.get(*n),
            _ => None,
        };
        match next {
            Some(v) => cur = Some(v),
            None => return false,
        }
    }
    true
}

pub(crate) fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

impl CookbookCache {
    pub fn len(&self) -> usize {
        self.loaded.len()
    }
    pub fn is_empty(&self) -> bool {
        self.loaded.is_empty()
    }
}
