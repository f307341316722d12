//! Cookbooks: `cookbooks/<name>/cookbook.toml`, `steps/*.sh.hbs`, optional `files/*`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::duration::Secs;
use super::problem::{display_path, Problem, Problems};
use super::tomlfile::{KeyPath, TomlFile};

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct StepDef {
    name: String,
    description: Option<String>,
    /// Path below the cookbook; default `steps/<name>.sh.hbs`.
    template: Option<String>,
    timeout: Option<Secs>,
    reboot: Option<bool>,
}

/// One step of a cookbook, with its template source.
#[derive(Clone, Debug)]
pub struct Step {
    pub name: String,
    pub description: String,
    /// The template's path, relative to the project root (for messages).
    pub template_path: PathBuf,
    pub source: String,
    pub timeout: Option<Secs>,
    pub reboot: bool,
}

#[derive(Clone, Debug)]
pub struct Cookbook {
    pub name: String,
    pub dir: PathBuf,
    pub description: String,
    /// Cookbooks that must come earlier in a run list.
    pub depends: Vec<String>,
    /// Attribute defaults, seen by templates as `attr.*` (and by others as `node.<name>.*`).
    pub attributes: serde_json::Map<String, serde_json::Value>,
    pub steps: Vec<Step>,
    /// `files/<path>` → content.
    pub files: BTreeMap<String, Vec<u8>>,
    /// `[checks]`: attribute path (dotted, below the cookbook's attributes) → what it must be.
    pub checks: BTreeMap<String, super::checks::Check>,
}

/// Names of roles, cookbooks, steps: what is safe in tags, paths and comments.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

impl Cookbook {
    /// Loads `cookbooks/<name>`: every problem in it, or the cookbook.
    pub fn load(root: &Path, name: &str) -> Result<Cookbook, Problems> {
        let dir = root.join("cookbooks").join(name);
        let toml_path = dir.join("cookbook.toml");
        let shown_dir = display_path(root, &dir);
        if !dir.is_dir() {
            return Err(Problem::new(&shown_dir, "", "no such cookbook (expected a folder with cookbook.toml)").into());
        }
        let file = TomlFile::load(root, &toml_path).map_err(Problems::from)?;
        let mut problems = Problems::default();
        let top = KeyPath::root();

        let known = ["description", "depends", "attributes", "checks", "steps"];
        for k in file.table.keys() {
            if !known.contains(&k.as_str()) {
                problems.push(file.problem(&top.key(k), format!("unknown key (expected one of {})", known.join(", "))));
            }
        }
        let description: Option<String> = get(&file, &mut problems, "description");
        let depends: Option<Vec<String>> = get(&file, &mut problems, "depends");
        let attributes: Option<toml::Table> = get(&file, &mut problems, "attributes");
        let checks_raw: Option<BTreeMap<String, String>> = get(&file, &mut problems, "checks");
        let mut checks = BTreeMap::new();
        for (path, kind) in checks_raw.unwrap_or_default() {
            match super::checks::parse(&kind) {
                Some(c) => {
                    checks.insert(path, c);
                }
                None => problems.push(file.problem(
                    &top.key("checks").key(&path),
                    format!("unknown check `{kind}` (checks: {})", super::checks::KINDS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")),
                )),
            }
        }
        let steps_raw = file.table.get("steps").cloned();

        let mut steps = Vec::new();
        match steps_raw {
            None => problems.push(file.problem(&top, "a cookbook needs at least one [[steps]] entry")),
            Some(toml::Value::Array(items)) => {
                if items.is_empty() {
                    problems.push(file.problem(&top.key("steps"), "a cookbook needs at least one step"));
                }
                let mut seen: BTreeMap<String, usize> = BTreeMap::new();
                for (i, item) in items.into_iter().enumerate() {
                    let at = top.key("steps").index(i);
                    let def: StepDef = match file.typed(&at, item) {
                        Ok(d) => d,
                        Err(p) => {
                            problems.push(p);
                            continue;
                        }
                    };
                    if !valid_name(&def.name) {
                        problems.push(file.problem(&at.key("name"), format!("`{}` is not a valid step name (a-z, 0-9, - and _)", def.name)));
                        continue;
                    }
                    if let Some(first) = seen.insert(def.name.clone(), i) {
                        problems.push(file.problem(&at.key("name"), format!("two steps are named `{}` (steps[{first}] and steps[{i}])", def.name)));
                        continue;
                    }
                    let rel = def.template.clone().unwrap_or_else(|| format!("steps/{}.sh.hbs", def.name));
                    let tpath = dir.join(&rel);
                    let shown = display_path(root, &tpath);
                    if rel.contains("..") || Path::new(&rel).is_absolute() || !inside(&dir, &tpath) {
                        problems.push(file.problem(
                            &at.key(if def.template.is_some() { "template" } else { "name" }),
                            format!("{} is not inside the cookbook (a path, or a link, that leads out of it)", shown.display()),
                        ));
                        continue;
                    }
                    match def.timeout {
                        Some(t) if t.0 == 0 => {
                            problems.push(file.problem(&at.key("timeout"), "must be longer than 0s"));
                            continue;
                        }
                        Some(t) if t.0 > super::limits::STEP_TIMEOUT_MAX => {
                            problems.push(file.problem(&at.key("timeout"), format!("{t} is longer than SSM Run Command allows a command to run (48h)")));
                            continue;
                        }
                        _ => {}
                    }
                    match std::fs::read_to_string(&tpath) {
                        Ok(source) => steps.push(Step {
                            name: def.name,
                            description: def.description.unwrap_or_default(),
                            template_path: shown,
                            source,
                            timeout: def.timeout,
                            reboot: def.reboot.unwrap_or(false),
                        }),
                        Err(e) => problems.push(file.problem(
                            &at.key(if def.template.is_some() { "template" } else { "name" }),
                            format!("cannot read the step's template {}: {e}", shown.display()),
                        )),
                    }
                }
            }
            Some(_) => problems.push(file.problem(&top.key("steps"), "wrong type: expected [[steps]] tables")),
        }

        for (i, d) in depends.iter().flatten().enumerate() {
            if !valid_name(d) {
                problems.push(file.problem(&top.key("depends").index(i), format!("`{d}` is not a cookbook name")));
            } else if d == name {
                problems.push(file.problem(&top.key("depends").index(i), "a cookbook cannot depend on itself"));
            } else if !root.join("cookbooks").join(d).join("cookbook.toml").is_file() {
                problems.push(file.problem(&top.key("depends").index(i), format!("unknown cookbook `{d}` (no cookbooks/{d}/cookbook.toml)")));
            }
        }

        let files = match read_files(root, &dir.join("files")) {
            Ok(f) => f,
            Err(p) => {
                problems.push(p);
                BTreeMap::new()
            }
        };
        let attributes = match attributes.map(toml_to_json) {
            Some(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        problems.into_result(Cookbook {
            name: name.to_string(),
            dir,
            description: description.unwrap_or_default(),
            depends: depends.unwrap_or_default(),
            attributes,
            steps,
            files,
            checks,
        })
    }
}

fn get<T: serde::de::DeserializeOwned>(file: &TomlFile, problems: &mut Problems, key: &str) -> Option<T> {
    let v = file.table.get(key)?.clone();
    match file.typed(&KeyPath::root().key(key), v) {
        Ok(t) => Some(t),
        Err(p) => {
            problems.push(p);
            None
        }
    }
}

/// True when `path` (followed through any link) lies inside `dir` (also followed): a cookbook's
/// templates and files may not lead out of it.
fn inside(dir: &Path, path: &Path) -> bool {
    match (dir.canonicalize(), path.canonicalize()) {
        (Ok(d), Ok(p)) => p.starts_with(d),
        // A missing file is reported when it is read.
        (Ok(_), Err(_)) => !path.is_symlink(),
        _ => false,
    }
}

/// Every regular file below `dir`, by its path relative to `dir` (`/`-separated); a file or a
/// folder that leads out of the cookbook (a link) is refused.
fn read_files(root: &Path, dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, Problem> {
    let mut out = BTreeMap::new();
    if !dir.exists() {
        return Ok(out);
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| Problem::new(display_path(root, &d), "", format!("cannot read the folder: {e}")))?;
        for entry in entries {
            let entry = entry.map_err(|e| Problem::new(display_path(root, &d), "", format!("cannot read the folder: {e}")))?;
            let path = entry.path();
            let Some(cookbook) = dir.parent() else { continue };
            if !inside(cookbook, &path) {
                return Err(Problem::new(display_path(root, &path), "", "leads out of the cookbook (a link): a cookbook delivers only its own files"));
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap_or(&path).to_string_lossy().replace('\\', "/");
                let bytes = std::fs::read(&path).map_err(|e| Problem::new(display_path(root, &path), "", format!("cannot read the file: {e}")))?;
                out.insert(rel, bytes);
            }
        }
    }
    Ok(out)
}

/// TOML → JSON (dates become strings).
pub fn toml_to_json(v: toml::Table) -> serde_json::Value {
    fn conv(v: toml::Value) -> serde_json::Value {
        match v {
            toml::Value::String(s) => serde_json::Value::String(s),
            toml::Value::Integer(i) => serde_json::Value::from(i),
            toml::Value::Float(f) => serde_json::Value::from(f),
            toml::Value::Boolean(b) => serde_json::Value::Bool(b),
            toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
            toml::Value::Array(a) => serde_json::Value::Array(a.into_iter().map(conv).collect()),
            toml::Value::Table(t) => serde_json::Value::Object(t.into_iter().map(|(k, v)| (k, conv(v))).collect()),
        }
    }
    conv(toml::Value::Table(v))
}
