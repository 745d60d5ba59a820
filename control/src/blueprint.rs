//! Blueprints: what a tenant is made of. A blueprint file (`deploy/blueprints/*.toml`) lists
//! components (image, command, env templates, port, health check, resources, replicas),
//! routing rules (path prefix → component) and named themes that set env.
//!
//! Templates are `{{tenant.slug}}`, `{{tenant.name}}`, `{{tenant.id}}`,
//! `{{tenant.hostname}}`, `{{database.url}}`, `{{database.schema}}` and `{{theme.name}}`;
//! anything else is refused when the file is loaded, with the file and key, so a typo never
//! reaches a container. Invariants: a loaded blueprint is valid: component names unique,
//! every route names a component, the default theme exists.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// Template variables a blueprint may use.
pub const VARIABLES: [&str; 7] = [
    "tenant.slug",
    "tenant.name",
    "tenant.id",
    "tenant.hostname",
    "database.url",
    "database.schema",
    "theme.name",
];

/// Where a tenant's data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseKind {
    /// A schema and role on the shared tenant-database server.
    Schema,
    /// A whole database (and role) per tenant.
    Database,
    /// No database.
    None,
}

/// Health check of a component.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// HTTP path answered with 2xx when ready.
    pub path: String,
    /// How long a new container may take to become healthy.
    pub timeout_seconds: u64,
}

/// CPU and memory limits of one container.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPUs (fractions allowed).
    pub cpus: f64,
    /// Memory limit, MiB.
    pub memory_mb: u64,
}

/// One kind of container of a tenant.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    /// Name, unique in the blueprint (`[a-z0-9-]`).
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Command (empty: the image's).
    #[serde(default)]
    pub command: Vec<String>,
    /// Port the container listens on.
    pub port: u16,
    /// Containers of this component.
    #[serde(default = "one")]
    pub replicas: u32,
    /// Readiness check.
    pub health: Health,
    /// Limits.
    pub resources: Resources,
    /// Environment, values may hold templates.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

/// A path prefix served by a component.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// Path prefix (`/` for everything else).
    pub path: String,
    /// Component serving it.
    pub component: String,
}

/// A named look (and behaviour) of the store.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Theme {
    /// Environment for every component (over the component's own).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// A validated blueprint.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Blueprint {
    /// Name (the file's stem).
    pub name: String,
    /// What it is.
    #[serde(default)]
    pub description: String,
    /// Where tenant data lives.
    pub database: DatabaseKind,
    /// Theme used when none is asked for.
    pub default_theme: String,
    /// Components.
    pub components: Vec<Component>,
    /// Path routing, longest prefix first when matched.
    pub routes: Vec<RouteRule>,
    /// Themes by name.
    pub themes: BTreeMap<String, Theme>,
    /// Seconds without traffic after which a store's containers are frozen (`docker
    /// pause`); absent: never. A tenant may have its own (`PATCH /v1/tenants/{id}`).
    #[serde(default)]
    pub idle_pause_seconds: Option<u64>,
    /// Seconds without traffic after which they are stopped; absent: never.
    #[serde(default)]
    pub idle_stop_seconds: Option<u64>,
}

/// The longest idle period a store may be given (30 days).
pub const MAX_IDLE_SECONDS: u64 = 30 * 24 * 3600;

/// Check a pair of idle periods (a blueprint's or a tenant's): each 1 s to 30 days, and a
/// store stops only after it froze. Returns the offending key and why.
pub fn check_idle(pause: Option<u64>, stop: Option<u64>) -> Result<(), (&'static str, String)> {
    for (key, v) in [("idle_pause_seconds", pause), ("idle_stop_seconds", stop)] {
        if v.is_some_and(|v| !(1..=MAX_IDLE_SECONDS).contains(&v)) {
            return Err((key, format!("must be 1-{MAX_IDLE_SECONDS} (30 days)")));
        }
    }
    if let (Some(p), Some(s)) = (pause, stop) {
        if s <= p {
            return Err((
                "idle_stop_seconds",
                format!("must be longer than idle_pause_seconds ({p})"),
            ));
        }
    }
    Ok(())
}

/// Values the templates are filled with.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// `tenant.slug`.
    pub slug: String,
    /// `tenant.name`.
    pub name: String,
    /// `tenant.id`.
    pub id: String,
    /// `tenant.hostname`.
    pub hostname: String,
    /// `database.url`.
    pub database_url: String,
    /// `database.schema`.
    pub database_schema: String,
}

fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 40
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A piece of a template value.
enum Piece<'a> {
    /// Literal text.
    Text(&'a str),
    /// A `{{variable}}`, trimmed.
    Var(&'a str),
}

/// `value` split into text and variables, or why it is malformed.
fn pieces(value: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(i) = rest.find("{{") {
        out.push(Piece::Text(&rest[..i]));
        let after = &rest[i + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| "has \"{{\" without a closing \"}}\"".to_string())?;
        out.push(Piece::Var(after[..end].trim()));
        rest = &after[end + 2..];
    }
    if rest.contains("}}") {
        return Err("has \"}}\" without an opening \"{{\"".into());
    }
    out.push(Piece::Text(rest));
    Ok(out)
}

/// The variables used in `value`, or why it is malformed.
fn variables(value: &str) -> Result<Vec<&str>, String> {
    Ok(pieces(value)?
        .into_iter()
        .filter_map(|p| match p {
            Piece::Var(v) => Some(v),
            Piece::Text(_) => None,
        })
        .collect())
}

/// `value` with its variables filled in (it was checked when the blueprint was loaded).
fn render(value: &str, ctx: &Context, theme: &str) -> String {
    let Ok(pieces) = pieces(value) else {
        return value.to_owned();
    };
    pieces
        .into_iter()
        .map(|p| match p {
            Piece::Text(t) => t,
            Piece::Var("tenant.slug") => &ctx.slug,
            Piece::Var("tenant.name") => &ctx.name,
            Piece::Var("tenant.id") => &ctx.id,
            Piece::Var("tenant.hostname") => &ctx.hostname,
            Piece::Var("database.url") => &ctx.database_url,
            Piece::Var("database.schema") => &ctx.database_schema,
            Piece::Var("theme.name") => theme,
            Piece::Var(_) => "",
        })
        .collect()
}

impl Blueprint {
    /// Parse and validate the TOML `text` of `file` (named `<name>.toml`); every problem is
    /// reported as `file: key: reason`.
    pub fn parse(file: &str, text: &str) -> Result<Blueprint, Vec<String>> {
        let b: Blueprint = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|r| {
                let upto = r.start.min(text.len());
                text.as_bytes()[..upto]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
                    + 1
            });
            vec![match line {
                Some(l) => format!("{file}: line {l}: {}", e.message()),
                None => format!("{file}: {}", e.message()),
            }]
        })?;
        let mut problems = Vec::new();
        let mut p = |key: String, why: String| problems.push(format!("{file}: {key}: {why}"));
        let stem = Path::new(file)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("");
        if b.name != stem {
            p(
                "name".into(),
                format!("{:?} must match the file name ({stem:?})", b.name),
            );
        }
        if b.components.is_empty() {
            p(
                "components".into(),
                "at least one component is needed".into(),
            );
        }
        let check_env =
            |key: &str, env: &BTreeMap<String, String>, p: &mut dyn FnMut(String, String)| {
                for (k, v) in env {
                    if k.is_empty() || !k.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
                        p(
                            format!("{key}.env.{k}"),
                            "names use letters, digits and _".into(),
                        );
                    }
                    match variables(v) {
                        Err(why) => p(format!("{key}.env.{k}"), why),
                        Ok(vars) => {
                            for var in vars {
                                if !VARIABLES.contains(&var) {
                                    p(
                                        format!("{key}.env.{k}"),
                                        format!(
                                            "unknown template variable {{{{{var}}}}} (known: {})",
                                            VARIABLES.join(", ")
                                        ),
                                    );
                                }
                            }
                        }
                    }
                }
            };
        for (i, c) in b.components.iter().enumerate() {
            let key = format!("components[{i}]");
            if !plain_name(&c.name) {
                p(
                    format!("{key}.name"),
                    format!("{:?}: use 1-40 of a-z, 0-9 and -", c.name),
                );
            }
            if b.components[..i].iter().any(|o| o.name == c.name) {
                p(format!("{key}.name"), format!("{:?} is used twice", c.name));
            }
            if c.image.trim().is_empty() || c.image.contains(char::is_whitespace) {
                p(format!("{key}.image"), "must be an image reference".into());
            }
            if c.port == 0 {
                p(format!("{key}.port"), "must be 1-65535".into());
            }
            if !(1..=20).contains(&c.replicas) {
                p(format!("{key}.replicas"), "must be 1-20".into());
            }
            if !c.health.path.starts_with('/') {
                p(format!("{key}.health.path"), "must start with /".into());
            }
            if !(1..=600).contains(&c.health.timeout_seconds) {
                p(
                    format!("{key}.health.timeout_seconds"),
                    "must be 1-600".into(),
                );
            }
            if !(c.resources.cpus > 0.0 && c.resources.cpus <= 64.0) {
                p(
                    format!("{key}.resources.cpus"),
                    "must be more than 0 and at most 64".into(),
                );
            }
            if !(16..=262_144).contains(&c.resources.memory_mb) {
                p(
                    format!("{key}.resources.memory_mb"),
                    "must be 16-262144".into(),
                );
            }
            check_env(&key, &c.env, &mut p);
        }
        if b.routes.is_empty() {
            p("routes".into(), "at least one route is needed".into());
        }
        for (i, r) in b.routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            if !r.path.starts_with('/') || r.path.contains(char::is_whitespace) {
                p(
                    format!("{key}.path"),
                    format!("{:?} must be a path starting with /", r.path),
                );
            }
            if b.routes[..i].iter().any(|o| o.path == r.path) {
                p(
                    format!("{key}.path"),
                    format!("{:?} is routed twice", r.path),
                );
            }
            if !b.components.iter().any(|c| c.name == r.component) {
                p(
                    format!("{key}.component"),
                    format!("{:?} is not a component of this blueprint", r.component),
                );
            }
        }
        if b.themes.is_empty() {
            p("themes".into(), "at least one theme is needed".into());
        }
        for (name, t) in &b.themes {
            if !plain_name(name) {
                p(
                    format!("themes.{name}"),
                    "theme names use a-z, 0-9 and -".into(),
                );
            }
            check_env(&format!("themes.{name}"), &t.env, &mut p);
        }
        if !b.themes.contains_key(&b.default_theme) {
            p(
                "default_theme".into(),
                format!("{:?} is not one of the themes", b.default_theme),
            );
        }
        if let Err((key, why)) = check_idle(b.idle_pause_seconds, b.idle_stop_seconds) {
            p(key.into(), why);
        }
        if problems.is_empty() {
            Ok(b)
        } else {
            Err(problems)
        }
    }

    /// Every `*.toml` in `dir`, by name; all problems of all files at once.
    pub fn load_dir(dir: &Path) -> Result<BTreeMap<String, Blueprint>, Vec<String>> {
        let entries =
            std::fs::read_dir(dir).map_err(|e| vec![format!("{}: {e}", dir.display())])?;
        let mut files: Vec<_> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        let mut out = BTreeMap::new();
        let mut problems = Vec::new();
        for f in files {
            let name = f
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_owned();
            match std::fs::read_to_string(&f) {
                Ok(text) => match Blueprint::parse(&name, &text) {
                    Ok(b) => {
                        out.insert(b.name.clone(), b);
                    }
                    Err(p) => problems.extend(p),
                },
                Err(e) => problems.push(format!("{}: {e}", f.display())),
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems)
        }
    }

    /// The component serving `path`: the longest matching prefix (on segment boundaries).
    pub fn component_for(&self, path: &str) -> Option<&Component> {
        self.routes
            .iter()
            .filter(|r| tenantgate_config::route::prefix_matches(&r.path, path))
            .max_by_key(|r| r.path.len())
            .and_then(|r| self.components.iter().find(|c| c.name == r.component))
    }

    /// The environment of `component` for a tenant with `theme` (`None`: the default),
    /// templates filled in; theme env overrides the component's.
    pub fn env(
        &self,
        component: &str,
        theme: Option<&str>,
        ctx: &Context,
    ) -> Result<Vec<(String, String)>, String> {
        let theme_name = theme.unwrap_or(&self.default_theme);
        let theme = self
            .themes
            .get(theme_name)
            .ok_or_else(|| format!("blueprint {:?} has no theme {theme_name:?}", self.name))?;
        let c = self
            .components
            .iter()
            .find(|c| c.name == component)
            .ok_or_else(|| format!("blueprint {:?} has no component {component:?}", self.name))?;
        let mut env = c.env.clone();
        env.extend(theme.env.clone());
        Ok(env
            .into_iter()
            .map(|(k, v)| (k, render(&v, ctx, theme_name)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> BTreeMap<String, Blueprint> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/blueprints");
        Blueprint::load_dir(&dir).unwrap_or_else(|p| panic!("{}", p.join("\n")))
    }

    #[test]
    fn the_shipped_blueprints_are_valid() {
        let all = shipped();
        assert_eq!(
            all.keys().map(String::as_str).collect::<Vec<_>>(),
            ["demo-storefront", "medusa-nextjs"]
        );
        let m = &all["medusa-nextjs"];
        assert_eq!(
            m.themes.keys().collect::<Vec<_>>(),
            ["electronics", "fashion"]
        );
        for (path, component) in [
            ("/store/products", "medusa"),
            ("/admin", "medusa"),
            ("/auth/token", "medusa"),
            ("/storefront", "storefront"),
            ("/", "storefront"),
            ("/products/shirt", "storefront"),
        ] {
            assert_eq!(
                m.component_for(path).map(|c| c.name.as_str()),
                Some(component),
                "{path}"
            );
        }
    }

    #[test]
    fn env_templates_are_filled_and_themes_override() {
        let all = shipped();
        let ctx = Context {
            slug: "shop1".into(),
            name: "Shop One".into(),
            id: "t_1".into(),
            hostname: "shop1.platform.test".into(),
            database_url: "postgres://tg_shop1@db/tenants".into(),
            database_schema: "tg_shop1".into(),
        };
        let env: BTreeMap<_, _> = all["medusa-nextjs"]
            .env("storefront", Some("electronics"), &ctx)
            .expect("env")
            .into_iter()
            .collect();
        assert_eq!(
            env["NEXT_PUBLIC_MEDUSA_BACKEND_URL"],
            "https://shop1.platform.test"
        );
        assert_eq!(env["NEXT_PUBLIC_THEME"], "electronics");
        assert_eq!(env["NEXT_PUBLIC_PALETTE"], "slate");
        let env: BTreeMap<_, _> = all["demo-storefront"]
            .env("web", None, &ctx)
            .expect("env")
            .into_iter()
            .collect();
        assert_eq!(env["STORE_NAME"], "Shop One");
        assert_eq!(env["STORE_THEME"], "ocean");
        assert_eq!(env["DATABASE_URL"], "postgres://tg_shop1@db/tenants");
        assert!(all["demo-storefront"]
            .env("web", Some("neon"), &ctx)
            .is_err());
    }

    #[test]
    fn every_problem_is_reported_with_file_and_key() {
        let text = r#"
name = "other"
database = "schema"
default_theme = "missing"

[[components]]
name = "Web"
image = ""
port = 0
replicas = 0
health = { path = "healthz", timeout_seconds = 0 }
resources = { cpus = 0.0, memory_mb = 1 }
env = { A = "{{tenant.slugg}}", B = "{{tenant.slug", "bad-key" = "x" }

[[components]]
name = "Web"
image = "x"
port = 1
health = { path = "/", timeout_seconds = 1 }
resources = { cpus = 1.0, memory_mb = 64 }

[[routes]]
path = "store"
component = "nope"

[themes.ok]
env = {}
"#;
        let problems = Blueprint::parse("shop.toml", text)
            .expect_err("invalid")
            .join("\n");
        for needle in [
            "shop.toml: name: \"other\" must match the file name (\"shop\")",
            "components[0].name",
            "components[0].image",
            "components[0].port",
            "components[0].replicas",
            "components[0].health.path",
            "components[0].health.timeout_seconds",
            "components[0].resources.cpus",
            "components[0].resources.memory_mb",
            "components[0].env.A: unknown template variable {{tenant.slugg}}",
            "components[0].env.B: has \"{{\" without a closing",
            "components[0].env.bad-key",
            "components[1].name: \"Web\" is used twice",
            "routes[0].path",
            "routes[0].component: \"nope\" is not a component",
            "default_theme: \"missing\" is not one of the themes",
        ] {
            assert!(
                problems.contains(needle),
                "missing {needle:?} in:\n{problems}"
            );
        }
        let unknown =
            Blueprint::parse("x.toml", "name = \"x\"\nfoo = 1\n").expect_err("unknown key");
        assert!(
            unknown[0].contains("x.toml") && unknown[0].contains("foo"),
            "{unknown:?}"
        );
    }
}
