//! Template engines.
//!
//! * **Shell** (cookbook steps, `*.sh.hbs`): strict mode, and the escape function quotes for
//!   POSIX sh, so `{{x}}` always renders as exactly one shell word whatever `x` holds; `{{{x}}}`
//!   is raw and reserved for values a cookbook builds itself.
//! * **JSON** (policies, `*.json.hbs`): strict mode, and the escape function escapes for the
//!   inside of a JSON string, so `"{{x}}"` is always one JSON string.
//! * **Plain** (strings in role files, image names): strict mode, no escaping.
//!
//! Helpers: `json`, `join`, `default`, `base64`, `strip_prefix`, and in the shell engine `words` (a list or table
//! as several quoted words) and `file` (a cookbook file, base64-encoded).

use base64::Engine as _;
use handlebars::{Context, Handlebars, Helper, HelperDef, HelperResult, JsonRender, Output, RenderContext, RenderError, RenderErrorReason, ScopedJson};
use serde_json::Value as Json;

/// Quotes `s` as one POSIX shell word. Safe characters pass through unquoted; anything else is
/// wrapped in single quotes, with each `'` written as `'\''`. The empty string becomes `''`.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_@%+:,./-".contains(&b)) && !s.starts_with('-');
    if safe {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Escapes `s` for the inside of a JSON string literal (no surrounding quotes).
pub fn json_escape(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap_or_default(); // ok: serializing a str cannot fail
    quoted[1..quoted.len() - 1].to_string()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Flavor {
    Shell,
    Json,
    Plain,
}

/// A strict handlebars registry of one flavor, with bake's helpers.
pub fn registry(flavor: Flavor) -> Handlebars<'static> {
    let mut h = Handlebars::new();
    h.set_strict_mode(true);
    h.set_prevent_indent(true);
    match flavor {
        Flavor::Shell => h.register_escape_fn(shell_quote),
        Flavor::Json => h.register_escape_fn(json_escape),
        Flavor::Plain => h.register_escape_fn(handlebars::no_escape),
    }
    h.register_helper("json", Box::new(JsonHelper { raw: flavor == Flavor::Json }));
    h.register_helper("join", Box::new(JoinHelper));
    h.register_helper("default", Box::new(DefaultHelper));
    h.register_helper("base64", Box::new(Base64Helper));
    h.register_helper("strip_prefix", Box::new(StripPrefixHelper));
    if flavor == Flavor::Shell {
        h.register_helper("words", Box::new(WordsHelper));
        h.register_helper("file", Box::new(FileHelper));
    }
    h
}

fn err(msg: impl Into<String>) -> RenderError {
    RenderErrorReason::Other(msg.into()).into()
}

/// Parameter `i` of helper `name`, which must be given and must exist in the data.
fn required<'a>(h: &'a Helper<'_>, i: usize, name: &str) -> Result<&'a Json, RenderError> {
    let p = h.param(i).ok_or_else(|| err(format!("`{name}` needs a parameter at position {}", i + 1)))?;
    if p.is_value_missing() {
        let what = p.relative_path().cloned().unwrap_or_else(|| "its parameter".into());
        return Err(err(format!("`{name}` was given `{what}`, which is not set")));
    }
    Ok(p.value())
}

/// Renders a scalar as text; lists and tables are refused.
fn scalar_text(v: &Json, helper: &str) -> Result<String, RenderError> {
    match v {
        Json::String(s) => Ok(s.clone()),
        Json::Number(_) | Json::Bool(_) => Ok(v.render()),
        Json::Null => Ok(String::new()),
        _ => Err(err(format!("`{helper}` expects text, a number or a boolean, not a list or table"))),
    }
}

struct JsonHelper {
    raw: bool,
}

impl HelperDef for JsonHelper {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let v = required(h, 0, "json")?;
        let pretty = h.hash_get("pretty").map(|p| p.value().as_bool() == Some(true)).unwrap_or(false);
        let text = if pretty { serde_json::to_string_pretty(v) } else { serde_json::to_string(v) }.map_err(|e| err(format!("`json`: {e}")))?;
        // In the JSON engine the output is JSON already; elsewhere it is escaped like any value.
        let text = if self.raw { text } else { r.get_escape_fn()(&text) };
        out.write(&text)?;
        Ok(())
    }
}

struct JoinHelper;

impl HelperDef for JoinHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let list = required(h, 0, "join")?;
        let sep = match h.param(1) {
            Some(p) => scalar_text(p.value(), "join")?,
            None => " ".to_string(),
        };
        let items = list.as_array().ok_or_else(|| err("`join` expects a list"))?;
        let parts = items.iter().map(|v| scalar_text(v, "join")).collect::<Result<Vec<_>, _>>()?;
        Ok(ScopedJson::Derived(Json::String(parts.join(&sep))))
    }
}

struct DefaultHelper;

impl HelperDef for DefaultHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let v = h.param(0).ok_or_else(|| err("`default` needs a value and a fallback"))?;
        let fallback = h.param(1).ok_or_else(|| err("`default` needs a value and a fallback"))?;
        let chosen = if v.is_value_missing() || v.value().is_null() { fallback } else { v };
        if chosen.is_value_missing() {
            return Err(err("`default`: neither the value nor the fallback is set"));
        }
        Ok(ScopedJson::Derived(chosen.value().clone()))
    }
}

struct Base64Helper;

impl HelperDef for Base64Helper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let text = scalar_text(required(h, 0, "base64")?, "base64")?;
        Ok(ScopedJson::Derived(Json::String(base64::engine::general_purpose::STANDARD.encode(text))))
    }
}

/// `{{strip_prefix value "s3://"}}`: the value without that prefix (unchanged when it lacks it).
struct StripPrefixHelper;

impl HelperDef for StripPrefixHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let text = scalar_text(required(h, 0, "strip_prefix")?, "strip_prefix")?;
        let prefix = scalar_text(required(h, 1, "strip_prefix")?, "strip_prefix")?;
        let out = text.strip_prefix(prefix.as_str()).unwrap_or(&text).to_string();
        Ok(ScopedJson::Derived(Json::String(out)))
    }
}

/// `{{words list}}` → `'a' 'b c'`; `{{words table}}` → `'K=V' 'K2=V2'`; with `prefix="-p"` each
/// word is preceded by that option. Every word is quoted, so the output is safe although it is
/// written raw (several words cannot go through the one-word escape).
struct WordsHelper;

impl HelperDef for WordsHelper {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let v = required(h, 0, "words")?;
        let prefix = match h.hash_get("prefix") {
            Some(p) => {
                let p = scalar_text(p.value(), "words")?;
                let ok = p.starts_with('-') && p.len() > 1 && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
                if !ok {
                    return Err(err(format!("`words`: prefix `{p}` must be an option such as -p or --volume")));
                }
                Some(p)
            }
            None => None,
        };
        let items: Vec<String> = match v {
            Json::Array(a) => a.iter().map(|x| scalar_text(x, "words")).collect::<Result<_, _>>()?,
            Json::Object(m) => m.iter().map(|(k, x)| scalar_text(x, "words").map(|x| format!("{k}={x}"))).collect::<Result<_, _>>()?,
            other => vec![scalar_text(other, "words")?],
        };
        let mut words = Vec::new();
        for item in items {
            if let Some(p) = &prefix {
                words.push(p.clone());
            }
            words.push(shell_quote(&item));
        }
        out.write(&words.join(" "))?;
        Ok(())
    }
}

/// `{{file "name"}}`: the cookbook's `files/name`, base64-encoded (one safe word). The rendering
/// context carries the cookbook's files under `_files`.
struct FileHelper;

impl HelperDef for FileHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let name = scalar_text(required(h, 0, "file")?, "file")?;
        let cookbook = ctx.data().get("cookbook").and_then(Json::as_str).unwrap_or("?");
        let v = ctx.data().get("_files").and_then(|f| f.get(&name)).ok_or_else(|| err(format!("no file `{name}` in cookbooks/{cookbook}/files")))?;
        Ok(ScopedJson::Derived(v.clone()))
    }
}

/// One line describing a render error: `LINE: why` (the caller adds the file).
pub fn render_error_text(e: &RenderError) -> (Option<usize>, String) {
    let why = match e.reason() {
        RenderErrorReason::MissingVariable(Some(path)) => format!("`{path}` is not set (strict mode)"),
        RenderErrorReason::MissingVariable(None) => "a value used here is not set (strict mode)".into(),
        RenderErrorReason::Other(m) => m.clone(),
        other => other.to_string(),
    };
    (e.line_no, why)
}

/// One line describing a template syntax error.
pub fn template_error_text(e: &handlebars::TemplateError) -> (Option<usize>, String) {
    let why = format!("template syntax error: {}", e.reason());
    (e.pos().map(|(l, _)| l), why)
}

/// Renders `template` (a one-off string) with the plain engine.
pub fn render_plain(template: &str, data: &Json) -> Result<String, String> {
    let h = registry(Flavor::Plain);
    h.render_template(template, data).map_err(|e| match e.reason() {
        RenderErrorReason::TemplateError(t) => template_error_text(t).1,
        _ => render_error_text(&e).1,
    })
}

/// bake's shell library, put into every rendered step after the header.
pub const PRELUDE: &str = r#"# --- bake library (same in every step) ---
export DEBIAN_FRONTEND=noninteractive
# shellcheck disable=SC2317 # a step may use only some of these functions
{
bake_log() { printf 'bake: %s\n' "$*"; }
# bake_put MODE DEST: install stdin at DEST with MODE; status 0 when DEST changed, 1 when not.
bake_put() {
  local mode=$1 dest=$2 tmp
  tmp=$(mktemp)
  cat >"$tmp"
  if [ -f "$dest" ] && cmp -s "$tmp" "$dest" && [ "$(stat -c %a "$dest")" = "${mode#0}" ]; then
    rm -f "$tmp"
    return 1
  fi
  install -D -m "$mode" "$tmp" "$dest"
  rm -f "$tmp"
  bake_log "wrote $dest"
}
# bake_apt_update: refresh package lists at most once an hour.
bake_apt_update() {
  if [ -z "$(find /var/lib/bake/apt-updated -mmin -60 2>/dev/null)" ]; then
    apt-get update -q
    mkdir -p /var/lib/bake
    touch /var/lib/bake/apt-updated
  fi
}
# bake_apt_install PKG...: install the packages that are missing; nothing when all are there.
bake_apt_install() {
  local p missing=()
  for p in "$@"; do
    case $p in -*|'') echo "bake: \`$p' is not a package name" >&2; return 1 ;; esac
    dpkg-query -W -f='${Status}' -- "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  bake_apt_update
  apt-get install -y -q --no-install-recommends -- "${missing[@]}"
}
# bake_systemd: true when systemd runs this machine (false in a chroot or container).
bake_systemd() { [ -d /run/systemd/system ]; }
bake_enable() {
  local u
  for u in "$@"; do systemctl is-enabled -q "$u" 2>/dev/null || systemctl enable -q "$u"; done
}
bake_disable() {
  local u
  for u in "$@"; do
    if systemctl is-enabled -q "$u" 2>/dev/null; then systemctl disable -q "$u"; fi
    if bake_systemd && systemctl is-active -q "$u"; then systemctl stop "$u"; fi
  done
  return 0
}
bake_restart() { if bake_systemd; then systemctl restart "$@"; else bake_log "no systemd: restart of $* skipped"; fi; }
bake_reload_units() { if bake_systemd; then systemctl daemon-reload; fi; }
}
# --- end of bake library ---
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quoting_keeps_safe_words_and_quotes_the_rest() {
        assert_eq!(shell_quote("abc-1.2/x:y"), "abc-1.2/x:y");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("-rf"), "'-rf'");
        assert_eq!(shell_quote("$(id)"), "'$(id)'");
        assert_eq!(shell_quote("a\nb"), "'a\nb'");
        assert_eq!(shell_quote("*"), "'*'");
        assert_eq!(shell_quote("~root"), "'~root'");
    }

    #[test]
    fn json_escape_is_the_inside_of_a_string() {
        assert_eq!(json_escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(json_escape("a\nb"), "a\\nb");
    }

    #[test]
    fn shell_engine_quotes_values_and_helpers() -> Result<(), Box<dyn std::error::Error>> {
        let h = registry(Flavor::Shell);
        let data = json!({"v": "a b", "l": ["x y", "z"], "m": {"K": "v 1"}, "n": 3});
        assert_eq!(h.render_template("echo {{v}}", &data)?, "echo 'a b'");
        assert_eq!(h.render_template("{{{v}}}", &data)?, "a b");
        assert_eq!(h.render_template("{{join l \",\"}}", &data)?, "'x y,z'");
        assert_eq!(h.render_template("{{words l prefix=\"-v\"}}", &data)?, "-v 'x y' -v z");
        assert_eq!(h.render_template("{{words m}}", &data)?, "'K=v 1'");
        assert_eq!(h.render_template("{{json m}}", &data)?, "'{\"K\":\"v 1\"}'");
        assert_eq!(h.render_template("{{default missing \"d e\"}}", &data)?, "'d e'");
        assert_eq!(h.render_template("{{default n 1}}", &data)?, "3");
        assert_eq!(h.render_template("{{base64 v}}", &data)?, "YSBi");
        Ok(())
    }

    #[test]
    fn strict_mode_refuses_missing_values_even_in_helpers() {
        let h = registry(Flavor::Shell);
        let data = json!({"attr": {}});
        let e = h.render_template("x\n{{attr.nope}}", &data).unwrap_err();
        let (line, why) = render_error_text(&e);
        assert_eq!(line, Some(2));
        assert!(why.contains("attr.nope"), "{why}");
        for t in ["{{json attr.nope}}", "{{join attr.nope}}", "{{base64 attr.nope}}", "{{words attr.nope}}"] {
            let e = h.render_template(t, &data).unwrap_err();
            assert!(render_error_text(&e).1.contains("attr.nope"), "{t}");
        }
        assert!(h.render_template("{{words attr prefix=\"; rm\"}}", &json!({"attr": []})).is_err());
    }

    #[test]
    fn json_engine_escapes_inside_strings_and_json_is_raw() -> Result<(), Box<dyn std::error::Error>> {
        let h = registry(Flavor::Json);
        let data = json!({"p": "/a\"b", "l": ["x", "y"]});
        assert_eq!(h.render_template("\"{{p}}\"", &data)?, r#""/a\"b""#);
        assert_eq!(h.render_template("{{json l}}", &data)?, r#"["x","y"]"#);
        Ok(())
    }
}
