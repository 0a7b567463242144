//! Recipes: TOML files that declare a turn pipeline.
//!
//! ```toml
//! [recipe]
//! name = "ecr"
//! description = "..."
//! pipeline = ["link", "emotion"]
//! extends = "base.toml"        # optional; deep-merged key by key, this file wins
//! data_sample = 0.2            # optional; the fraction of the data's dialogues that training
//!                              # and evaluation use (default 1: all), for quick recipes
//!
//! [stages.link]
//! use = "entity_linker"        # a registered factory, "lua" or "dylib"
//! enabled = true               # default
//! [stages.link.with]           # the stage's own typed config, read only by its factory
//! ```
//!
//! Loading validates everything before any stage is built, and collects every
//! problem as a [`Diagnostic`] with file, line, column and key: TOML syntax,
//! `extends` (missing file, cycle), the shape of `[recipe]` and `[stages.*]`,
//! unknown `use` (with a suggestion), the stage's config (unknown or mistyped
//! keys), missing files, pipeline ids without a stage table and stage tables
//! outside the pipeline, and data flow: a stage that reads a [`Field`] that no
//! earlier enabled stage writes.

use crate::registry::{PreparedStage, Registry};
use crate::stage::{BuildContext, StageIo};
use crate::turn::Field;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use toml::de::{DeTable, DeValue};

/// One problem found in a recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line and column, when known.
    pub location: Option<(usize, usize)>,
    /// The dotted recipe key it is about (e.g. `stages.emotion.with.threshold`); empty for the whole file.
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, col)) = self.location {
            write!(f, ":{line}:{col}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a recipe (never empty).
#[derive(Debug, Clone)]
pub struct RecipeError(pub Vec<Diagnostic>);

impl fmt::Display for RecipeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RecipeError {}

/// One stage of a loaded recipe.
#[derive(Clone)]
pub struct RecipeStage {
    /// The stage id (its key under `[stages]`).
    pub id: String,
    /// The factory name (`use`).
    pub use_name: String,
    /// Whether the stage runs.
    pub enabled: bool,
    /// What it reads and writes.
    pub io: StageIo,
    prepared: Arc<dyn PreparedStage>,
    context: BuildContext,
}

impl RecipeStage {
    /// The stage's config with defaults filled in.
    pub fn config(&self) -> toml::Value {
        self.prepared.resolved()
    }

    pub(crate) fn prepared(&self) -> &dyn PreparedStage {
        self.prepared.as_ref()
    }

    /// The context the stage is checked and built with: use its `resolve` for
    /// the stage's configured paths (each resolves against the recipe file that wrote it).
    pub fn context(&self) -> &BuildContext {
        &self.context
    }
}

/// A loaded and validated recipe.
#[derive(Clone)]
pub struct Recipe {
    path: PathBuf,
    name: String,
    description: String,
    stages: Vec<RecipeStage>,
    context: BuildContext,
}

impl fmt::Debug for Recipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recipe").field("path", &self.path).field("name", &self.name).finish_non_exhaustive()
    }
}

impl Recipe {
    /// Load `path`, resolve `extends`, and validate everything against `registry`.
    pub fn load(path: impl AsRef<Path>, registry: &Registry) -> Result<Recipe, RecipeError> {
        Loader::new(registry).load(path.as_ref())
    }

    /// The recipe file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `recipe.name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `recipe.description`.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The stages in pipeline order (disabled ones included).
    pub fn stages(&self) -> &[RecipeStage] {
        &self.stages
    }

    /// The build context shared by the recipe's stages (see also [`RecipeStage::context`]).
    pub fn context(&self) -> &BuildContext {
        &self.context
    }

    /// The stage with id `id`.
    pub fn stage(&self, id: &str) -> Option<&RecipeStage> {
        self.stages.iter().find(|s| s.id == id)
    }

    /// The same recipe, its stages built over `resources` (a host that builds
    /// several engines shares one KG, one encoder, ...).
    pub fn with_resources(mut self, resources: &crate::resources::Resources) -> Recipe {
        self.context = self.context.with_resources(resources.clone());
        for s in &mut self.stages {
            s.context = s.context.with_resources(resources.clone());
        }
        self
    }

    /// The recipe's run directory, `runs/<name>/` ([`crate::paths`]).
    pub fn run_dir(&self) -> PathBuf {
        self.context.run_dir()
    }

    /// The first enabled stage that uses the factory `use_name`, with its
    /// typed config (defaults filled in). Training and evaluation commands use
    /// this to find, e.g., the `emotion_tagger` stage of a recipe.
    pub fn stage_config<C: serde::de::DeserializeOwned>(
        &self,
        use_name: &str,
    ) -> Result<Option<(String, C)>, RecipeError> {
        let Some(stage) = self.stages.iter().find(|s| s.enabled && s.use_name == use_name) else {
            return Ok(None);
        };
        let config = stage.config().try_into().map_err(|e: toml::de::Error| {
            RecipeError(vec![Diagnostic {
                file: self.path.clone(),
                location: None,
                key: format!("stages.{}.with", stage.id),
                message: format!("cannot read the config of stage {:?} as {use_name}: {}", stage.id, e.message()),
            }])
        })?;
        Ok(Some((stage.id.clone(), config)))
    }

    /// The resolved recipe as TOML (after `extends`, defaults filled in).
    pub fn to_toml(&self) -> String {
        let mut root = toml::Table::new();
        let mut header = toml::Table::new();
        header.insert("name".into(), self.name.clone().into());
        header.insert("description".into(), self.description.clone().into());
        let pipeline: Vec<toml::Value> = self.stages.iter().map(|s| s.id.clone().into()).collect();
        header.insert("pipeline".into(), pipeline.into());
        if self.context.data_sample() < 1.0 {
            header.insert("data_sample".into(), self.context.data_sample().into());
        }
        root.insert("recipe".into(), header.into());
        let mut stages = toml::Table::new();
        for s in &self.stages {
            let mut t = toml::Table::new();
            t.insert("use".into(), s.use_name.clone().into());
            t.insert("enabled".into(), s.enabled.into());
            t.insert("with".into(), s.config());
            stages.insert(s.id.clone(), t.into());
        }
        root.insert("stages".into(), stages.into());
        toml::to_string_pretty(&root).unwrap_or_else(|e| format!("# cannot print the recipe: {e}\n"))
    }
}

/// A TOML value with the place it came from.
#[derive(Debug, Clone)]
struct Node {
    file: usize,
    /// Span of the key that introduced the value (or of the value for the root).
    key_span: Range<usize>,
    /// Span of the value.
    span: Range<usize>,
    kind: NodeKind,
}

#[derive(Debug, Clone)]
enum NodeKind {
    Table(BTreeMap<String, Node>),
    /// A non-table value, with the spans of its elements when it is an array.
    Leaf(toml::Value, Vec<Range<usize>>),
}

impl Node {
    fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            NodeKind::Table(t) => t.get(key),
            NodeKind::Leaf(..) => None,
        }
    }

    fn to_value(&self) -> toml::Value {
        match &self.kind {
            NodeKind::Table(t) => toml::Value::Table(t.iter().map(|(k, v)| (k.clone(), v.to_value())).collect()),
            NodeKind::Leaf(v, _) => v.clone(),
        }
    }

    /// Deep merge: `over` wins for leaves, tables merge key by key.
    fn merge(base: Node, over: Node) -> Node {
        match (base.kind, over.kind) {
            (NodeKind::Table(mut b), NodeKind::Table(o)) => {
                for (k, v) in o {
                    let merged = match b.remove(&k) {
                        Some(old) => Node::merge(old, v),
                        None => v,
                    };
                    b.insert(k, merged);
                }
                Node { kind: NodeKind::Table(b), ..over }
            }
            (_, kind) => Node { kind, ..over },
        }
    }
}

fn type_name(v: &toml::Value) -> &'static str {
    v.type_str()
}

fn convert(file: usize, key_span: Range<usize>, value: &toml::Spanned<DeValue<'_>>) -> Node {
    let span = value.span();
    let kind = match value.get_ref() {
        DeValue::Table(t) => {
            NodeKind::Table(t.iter().map(|(k, v)| (k.get_ref().to_string(), convert(file, k.span(), v))).collect())
        }
        other => {
            let elems = match other {
                DeValue::Array(a) => a.iter().map(|e| e.span()).collect(),
                _ => Vec::new(),
            };
            // A standalone value deserializes from its own spanned representation.
            let de = toml::de::ValueDeserializer::from(value.clone());
            let v = <toml::Value as serde::Deserialize>::deserialize(de).unwrap_or(toml::Value::Boolean(false));
            NodeKind::Leaf(v, elems)
        }
    };
    Node { file, key_span, span, kind }
}

struct SourceFile {
    path: PathBuf,
    text: String,
}

struct Loader<'r> {
    registry: &'r Registry,
    files: Vec<SourceFile>,
    diags: Vec<Diagnostic>,
}

impl<'r> Loader<'r> {
    fn new(registry: &'r Registry) -> Self {
        Loader { registry, files: Vec::new(), diags: Vec::new() }
    }

    fn location(&self, file: usize, offset: usize) -> (usize, usize) {
        let text = &self.files[file].text;
        let before = &text[..offset.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rfind('\n').map_or(before.len(), |i| before.len() - i - 1) + 1;
        (line, col)
    }

    fn error_at(&mut self, node: Option<(usize, Range<usize>)>, file: usize, key: &str, message: String) {
        let (file, location) = match node {
            Some((f, span)) => (f, Some(self.location(f, span.start))),
            None => (file, None),
        };
        self.diags.push(Diagnostic { file: self.files[file].path.clone(), location, key: key.to_string(), message });
    }

    fn error_node(&mut self, node: &Node, key: &str, message: String) {
        self.error_at(Some((node.file, node.key_span.clone())), node.file, key, message);
    }

    fn error_value(&mut self, node: &Node, key: &str, message: String) {
        self.error_at(Some((node.file, node.span.clone())), node.file, key, message);
    }

    /// Read and parse one file; `None` after recording a diagnostic.
    fn read(&mut self, path: &Path, from: Option<(&Node, usize)>) -> Option<Node> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                let message = format!("cannot read recipe {}: {e}", path.display());
                let own = format!("cannot read the recipe: {e}: check the path");
                match from {
                    Some((node, _)) => {
                        let node = node.clone();
                        self.error_value(&node, "recipe.extends", message)
                    }
                    None => self.diags.push(Diagnostic {
                        file: path.to_path_buf(),
                        location: None,
                        key: String::new(),
                        message: own,
                    }),
                }
                return None;
            }
        };
        let file = self.files.len();
        self.files.push(SourceFile { path: path.to_path_buf(), text });
        let text = self.files[file].text.clone();
        let (parsed, errors) = DeTable::parse_recoverable(&text);
        if !errors.is_empty() {
            for e in errors {
                let span = e.span().unwrap_or(0..0);
                self.error_at(Some((file, span)), file, "", format!("TOML syntax error: {}", e.message()));
            }
            return None;
        }
        let span = parsed.span();
        let root = toml::Spanned::new(span.clone(), DeValue::Table(parsed.into_inner()));
        Some(convert(file, 0..0, &root))
    }

    /// Load a file and everything it extends, merged (the file itself wins).
    fn load_tree(&mut self, path: &Path, chain: &mut Vec<PathBuf>, from: Option<(&Node, usize)>) -> Option<Node> {
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if let Some(pos) = chain.iter().position(|p| *p == canonical) {
            let mut cycle: Vec<String> = chain[pos..].iter().map(|p| p.display().to_string()).collect();
            cycle.push(canonical.display().to_string());
            let message = format!("`extends` cycle: {}; remove one of the `extends` keys", cycle.join(" -> "));
            if let Some((node, _)) = from {
                let node = node.clone();
                self.error_value(&node, "recipe.extends", message);
            }
            return None;
        }
        let node = self.read(path, from)?;
        chain.push(canonical);
        let merged = match node.get("recipe").and_then(|r| r.get("extends")).cloned() {
            Some(ext) => match &ext.kind {
                NodeKind::Leaf(toml::Value::String(rel), _) => {
                    let parent = path.parent().unwrap_or(Path::new(".")).join(rel);
                    let file = node.file;
                    self.load_tree(&parent, chain, Some((&ext, file))).map(|base| Node::merge(base, node))
                }
                NodeKind::Leaf(v, _) => {
                    let t = type_name(v);
                    self.error_value(&ext, "recipe.extends", format!("expected a path string, found a {t}"));
                    None
                }
                NodeKind::Table(_) => {
                    self.error_value(&ext, "recipe.extends", "expected a path string, found a table".into());
                    None
                }
            },
            None => Some(node),
        };
        chain.pop();
        merged
    }

    fn load(mut self, path: &Path) -> Result<Recipe, RecipeError> {
        let root = self.load_tree(path, &mut Vec::new(), None);
        let recipe = root.and_then(|root| self.validate(path, &root));
        match recipe {
            Some(r) if self.diags.is_empty() => Ok(r),
            _ => {
                if self.diags.is_empty() {
                    self.diags.push(Diagnostic {
                        file: path.to_path_buf(),
                        location: None,
                        key: String::new(),
                        message: "the recipe is invalid".into(),
                    });
                }
                Err(RecipeError(self.diags))
            }
        }
    }

    fn string_leaf(&mut self, node: &Node, key: &str) -> Option<String> {
        match &node.kind {
            NodeKind::Leaf(toml::Value::String(s), _) => Some(s.clone()),
            NodeKind::Leaf(v, _) => {
                let t = type_name(v);
                self.error_value(node, key, format!("expected a string, found a {t}"));
                None
            }
            NodeKind::Table(_) => {
                self.error_value(node, key, "expected a string, found a table".into());
                None
            }
        }
    }

    fn unknown_keys(&mut self, table: &Node, prefix: &str, allowed: &[&str]) {
        let NodeKind::Table(t) = &table.kind else { return };
        let bad: Vec<(String, Node)> =
            t.iter().filter(|(k, _)| !allowed.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
        for (k, node) in bad {
            let hint = allowed
                .iter()
                .map(|a| (a, crate::registry::edit_distance(&k, a)))
                .filter(|&(_, d)| d <= 2)
                .min_by_key(|&(_, d)| d)
                .map(|(a, _)| format!(" (did you mean `{a}`?)"))
                .unwrap_or_default();
            self.error_node(
                &node,
                &join(prefix, &k),
                format!("unknown key `{k}`{hint}; allowed here: {}", allowed.join(", ")),
            );
        }
    }

    fn validate(&mut self, path: &Path, root: &Node) -> Option<Recipe> {
        let file = root.file;
        self.unknown_keys(root, "", &["recipe", "stages"]);
        let Some(header) = root.get("recipe").cloned() else {
            self.error_at(None, file, "recipe", "missing the [recipe] table (name, pipeline)".into());
            return None;
        };
        if !matches!(header.kind, NodeKind::Table(_)) {
            self.error_value(&header, "recipe", "expected a table".into());
            return None;
        }
        self.unknown_keys(&header, "recipe", &["name", "description", "pipeline", "extends", "data_sample"]);
        let name = match header.get("name").cloned() {
            Some(n) => self.string_leaf(&n, "recipe.name"),
            None => {
                self.error_node(&header, "recipe.name", "missing: give the recipe a name".into());
                None
            }
        };
        let description = match header.get("description").cloned() {
            Some(d) => self.string_leaf(&d, "recipe.description").unwrap_or_default(),
            None => String::new(),
        };
        let data_sample = header.get("data_sample").cloned().and_then(|n| self.data_sample(&n)).unwrap_or(1.0);
        let pipeline = self.pipeline(&header);
        let stage_tables = match root.get("stages").cloned() {
            Some(Node { kind: NodeKind::Table(t), .. }) => t,
            Some(other) => {
                self.error_value(&other, "stages", "expected a table of stage tables".into());
                BTreeMap::new()
            }
            None => BTreeMap::new(),
        };
        let context = BuildContext::new(path, name.clone().unwrap_or_default(), "").with_data_sample(data_sample);
        let ids: BTreeSet<&str> = pipeline.iter().map(|(id, _)| id.as_str()).collect();
        for (id, table) in &stage_tables {
            if !ids.contains(id.as_str()) {
                self.error_node(
                    table,
                    &format!("stages.{id}"),
                    format!("stage {id:?} is not in recipe.pipeline: add it there or remove the table"),
                );
            }
        }
        let mut stages = Vec::new();
        // Fields written before each stage: the session's, then every earlier enabled stage's.
        let mut provided: BTreeSet<Field> = Field::GIVEN.iter().cloned().collect();
        for (id, id_node) in &pipeline {
            let Some(table) = stage_tables.get(id) else {
                self.error_value(
                    id_node,
                    "recipe.pipeline",
                    format!("pipeline names stage {id:?} but there is no [stages.{id}] table"),
                );
                continue;
            };
            if let Some(stage) = self.stage(id, table, &context.for_stage(id).with_provided(provided.clone())) {
                if stage.enabled {
                    provided.extend(stage.io.writes.iter().cloned());
                }
                stages.push((stage, table.clone()));
            }
        }
        self.data_flow(&stages);
        let name = name?;
        Some(Recipe {
            path: path.to_path_buf(),
            name,
            description,
            stages: stages.into_iter().map(|(s, _)| s).collect(),
            context,
        })
    }

    /// `recipe.data_sample`: a fraction in (0, 1].
    fn data_sample(&mut self, node: &Node) -> Option<f64> {
        let value = match &node.kind {
            NodeKind::Leaf(toml::Value::Float(f), _) => *f,
            NodeKind::Leaf(toml::Value::Integer(i), _) => *i as f64,
            NodeKind::Leaf(v, _) => {
                let t = type_name(v);
                self.error_value(node, "recipe.data_sample", format!("expected a number in (0, 1], found a {t}"));
                return None;
            }
            NodeKind::Table(_) => {
                self.error_value(node, "recipe.data_sample", "expected a number in (0, 1], found a table".into());
                return None;
            }
        };
        if !(value > 0.0 && value <= 1.0) {
            self.error_value(
                node,
                "recipe.data_sample",
                format!("{value} is not in (0, 1]: 1 uses every dialogue, 0.2 a fifth of them"),
            );
            return None;
        }
        Some(value)
    }

    fn pipeline(&mut self, header: &Node) -> Vec<(String, Node)> {
        let Some(node) = header.get("pipeline").cloned() else {
            self.error_node(header, "recipe.pipeline", "missing: list the stage ids in order".into());
            return Vec::new();
        };
        let NodeKind::Leaf(toml::Value::Array(items), spans) = &node.kind else {
            self.error_value(&node, "recipe.pipeline", "expected an array of stage ids".into());
            return Vec::new();
        };
        let mut out: Vec<(String, Node)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let elem = Node {
                span: spans.get(i).cloned().unwrap_or(node.span.clone()),
                kind: NodeKind::Leaf(item.clone(), Vec::new()),
                ..node.clone()
            };
            let Some(id) = self.string_leaf(&elem, "recipe.pipeline") else { continue };
            if out.iter().any(|(o, _)| *o == id) {
                self.error_value(&elem, "recipe.pipeline", format!("stage {id:?} appears twice in the pipeline"));
                continue;
            }
            out.push((id, elem));
        }
        out
    }

    fn stage(&mut self, id: &str, table: &Node, ctx: &BuildContext) -> Option<RecipeStage> {
        let prefix = format!("stages.{id}");
        if !matches!(table.kind, NodeKind::Table(_)) {
            self.error_value(table, &prefix, "expected a table with `use`".into());
            return None;
        }
        self.unknown_keys(table, &prefix, &["use", "enabled", "with"]);
        let use_name = match table.get("use").cloned() {
            Some(u) => self.string_leaf(&u, &format!("{prefix}.use"))?,
            None => {
                self.error_node(
                    table,
                    &format!("{prefix}.use"),
                    "missing: name a registered stage, \"lua\" or \"dylib\"".into(),
                );
                return None;
            }
        };
        let enabled = match table.get("enabled").cloned() {
            Some(Node { kind: NodeKind::Leaf(toml::Value::Boolean(b), _), .. }) => b,
            Some(other) => {
                self.error_value(&other, &format!("{prefix}.enabled"), "expected true or false".into());
                true
            }
            None => true,
        };
        let Some(factory) = self.registry.get(&use_name) else {
            let use_node = table.get("use").cloned().unwrap_or_else(|| table.clone());
            let hint = match self.registry.suggest(&use_name) {
                Some(s) => format!("did you mean {s:?}? "),
                None => String::new(),
            };
            let known: Vec<&str> = self.registry.list().map(|(n, _)| n).collect();
            self.error_value(
                &use_node,
                &format!("{prefix}.use"),
                format!("unknown stage kind {use_name:?}: {hint}known kinds: {}", known.join(", ")),
            );
            return None;
        };
        let with_node = table.get("with").cloned();
        let with_value = match &with_node {
            Some(n @ Node { kind: NodeKind::Leaf(v, _), .. }) => {
                let t = type_name(v);
                self.error_value(n, &format!("{prefix}.with"), format!("expected a table, found a {t}"));
                return None;
            }
            Some(n) => n.to_value(),
            None => toml::Value::Table(toml::Table::new()),
        };
        let mut bases = std::collections::HashMap::new();
        if let Some(w) = &with_node {
            self.path_bases(w, &mut bases);
        }
        let ctx = &ctx.with_path_bases(bases);
        let prepared = match factory.prepare(with_value) {
            Ok(p) => p,
            Err((message, path)) => {
                let key = key_of_serde_error(&message, &path);
                let full = join(&format!("{prefix}.with"), &key);
                let at = locate(with_node.as_ref(), &key).unwrap_or_else(|| table.clone());
                self.error_node(&at, &full, format!("{message} (stage {id:?}, use {use_name:?})"));
                return None;
            }
        };
        if enabled {
            for issue in prepared.check(ctx) {
                let full = join(&format!("{prefix}.with"), &issue.key);
                let at = locate(with_node.as_ref(), &issue.key).unwrap_or_else(|| table.clone());
                self.error_value(&at, &full, issue.message);
            }
        }
        Some(RecipeStage {
            id: id.to_string(),
            use_name,
            enabled,
            io: prepared.io(),
            prepared: Arc::from(prepared),
            context: ctx.clone(),
        })
    }

    /// Each string value under `node` with the directory of the file that wrote it.
    fn path_bases(&self, node: &Node, out: &mut std::collections::HashMap<String, PathBuf>) {
        match &node.kind {
            NodeKind::Table(t) => t.values().for_each(|v| self.path_bases(v, out)),
            NodeKind::Leaf(toml::Value::String(s), _) => {
                let dir = self.files[node.file].path.parent().unwrap_or(Path::new("")).to_path_buf();
                out.entry(s.clone()).or_insert(dir);
            }
            NodeKind::Leaf(..) => {}
        }
    }

    fn data_flow(&mut self, stages: &[(RecipeStage, Node)]) {
        let mut written: BTreeMap<Field, String> =
            Field::GIVEN.iter().map(|f| (f.clone(), "the session".into())).collect();
        for (i, (stage, table)) in stages.iter().enumerate() {
            if !stage.enabled {
                continue;
            }
            for read in &stage.io.reads {
                if written.contains_key(read) {
                    continue;
                }
                let later: Vec<String> = stages
                    .iter()
                    .enumerate()
                    .filter(|(j, (s, _))| (*j > i || !s.enabled) && s.io.writes.contains(read))
                    .map(|(_, (s, _))| {
                        format!("{:?}{}", s.id, if s.enabled { " (later in the pipeline)" } else { " (disabled)" })
                    })
                    .collect();
                let hint = if later.is_empty() {
                    "add a stage that writes it before this one".to_string()
                } else {
                    format!("it is written by {}: move or enable that stage", later.join(", "))
                };
                self.error_node(
                    table,
                    &format!("stages.{}", stage.id),
                    format!("stage {:?} reads `{read}`, which no earlier enabled stage writes; {hint}", stage.id),
                );
            }
            for w in &stage.io.writes {
                written.entry(w.clone()).or_insert_with(|| stage.id.clone());
            }
        }
    }
}

fn join(prefix: &str, key: &str) -> String {
    match (prefix.is_empty(), key.is_empty()) {
        (true, _) => key.to_string(),
        (_, true) => prefix.to_string(),
        _ => format!("{prefix}.{key}"),
    }
}

/// The key a serde error is about: the tracked path, plus the unknown field's
/// name for `deny_unknown_fields` errors (serde reports those at the parent).
fn key_of_serde_error(message: &str, path: &str) -> String {
    let unknown = message.strip_prefix("unknown field `").and_then(|rest| rest.split('`').next()).map(str::to_string);
    match unknown {
        Some(field) if !path.ends_with(&field) => join(path, &field),
        _ => path.to_string(),
    }
}

/// The node at a dotted key inside `with`.
fn locate(with: Option<&Node>, key: &str) -> Option<Node> {
    let mut node = with?;
    if key.is_empty() {
        return Some(node.clone());
    }
    for part in key.split('.') {
        match node.get(part) {
            Some(n) => node = n,
            None => return Some(node.clone()),
        }
    }
    Some(node.clone())
}
