//! The data layer's shared resources, as engine resource keys: each loaded
//! once per engine ([`ecr_engine::Resources`]) and used by every stage that
//! needs it (the linker, the recommender, the retriever, ...).
//!
//! ```no_run
//! use ecr_data::keys::KgKey;
//! # fn f(ctx: &ecr_engine::BuildContext) -> Result<(), ecr_engine::BoxError> {
//! let kg = ctx.resources().get(&KgKey(ctx.data_dir()?))?;
//! println!("{} entities", kg.len());
//! # Ok(()) }
//! ```

use crate::catalogue::Catalogue;
use crate::kg::Kg;
use crate::linker::{Linker, LinkerOptions, common_words};
use crate::paths::require_file;
use crate::prepare::COMMON_WORD_MIN_COUNT;
use crate::redial::load_conversations;
use ecr_engine::{BoxError, ResourceKey, Resources};
use std::collections::HashSet;
use std::path::PathBuf;

/// The movie catalogue of the data directory (`redial/`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CatalogueKey(pub PathBuf);

impl ResourceKey for CatalogueKey {
    type Value = Catalogue;
    fn create(&self, _: &Resources) -> Result<Catalogue, BoxError> {
        for f in ["redial/movies_with_mentions.csv", "redial/movie_entity.json", "redial/movie_info.json"] {
            require_file(&self.0, f)?;
        }
        Ok(Catalogue::load(&self.0.join("redial"))?)
    }
}

/// The DBpedia KG of the data directory (`kg/`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KgKey(pub PathBuf);

impl ResourceKey for KgKey {
    type Value = Kg;
    fn create(&self, _: &Resources) -> Result<Kg, BoxError> {
        require_file(&self.0, "kg/entity2id.json")?;
        Ok(Kg::load(&self.0.join("kg"))?)
    }
}

/// Words people write mostly in lowercase in the training dialogues
/// ([`common_words`], at least [`COMMON_WORD_MIN_COUNT`] lowercase uses).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CommonWordsKey(pub PathBuf);

impl ResourceKey for CommonWordsKey {
    type Value = HashSet<String>;
    fn create(&self, _: &Resources) -> Result<HashSet<String>, BoxError> {
        let train = load_conversations(&require_file(&self.0, "redial/train.jsonl")?)?;
        let texts = train.iter().flat_map(|c| c.messages.iter().map(|m| m.text.as_str()));
        Ok(common_words(texts, COMMON_WORD_MIN_COUNT))
    }
}

/// The entity linker over the catalogue and KG of `dir`, with `options`
/// (whose common words are added from [`CommonWordsKey`]).
#[derive(Debug, Clone)]
pub struct LinkerKey {
    /// The data directory.
    pub dir: PathBuf,
    /// The options (its `common_words` are ignored: they come from the data).
    pub options: LinkerOptions,
}

/// Everything that tells two linkers apart: data dir, titles, entities, aliases, stop words, extra aliases.
type LinkerIdentity<'a> = (&'a PathBuf, bool, bool, bool, &'a [String], &'a [(String, String)]);

impl LinkerKey {
    /// Everything that tells two linkers apart, as one comparable value.
    fn identity(&self) -> LinkerIdentity<'_> {
        let o = &self.options;
        (&self.dir, o.titles, o.entities, o.aliases, &o.extra_stop_words, &o.extra_aliases)
    }
}

impl PartialEq for LinkerKey {
    fn eq(&self, other: &Self) -> bool {
        self.identity() == other.identity()
    }
}
impl Eq for LinkerKey {}
impl std::hash::Hash for LinkerKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.identity().hash(state);
    }
}

impl ResourceKey for LinkerKey {
    type Value = Linker;
    fn create(&self, resources: &Resources) -> Result<Linker, BoxError> {
        let catalogue = resources.get(&CatalogueKey(self.dir.clone()))?;
        let kg = resources.get(&KgKey(self.dir.clone()))?;
        let mut options = self.options.clone();
        options.common_words = (*resources.get(&CommonWordsKey(self.dir.clone()))?).clone();
        Ok(Linker::new(&catalogue, &kg, &options))
    }
}

/// Catalogue titles by ReDial movie id, to write `@<id>` out as people read it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MovieTitlesKey(pub PathBuf);

/// Titles by ReDial movie id.
#[derive(Debug, Clone, Default)]
pub struct MovieTitles(pub std::collections::HashMap<u32, String>);

impl MovieTitles {
    /// `text` with every known `@<id>` replaced by the movie's title.
    pub fn write_out(&self, text: &str) -> String {
        crate::linker::write_out_movies(text, |id| self.0.get(&id).map(String::as_str))
    }
}

impl ResourceKey for MovieTitlesKey {
    type Value = MovieTitles;
    fn create(&self, resources: &Resources) -> Result<MovieTitles, BoxError> {
        let cat = resources.get(&CatalogueKey(self.0.clone()))?;
        Ok(MovieTitles(cat.movies().iter().map(|m| (m.id, m.title.clone())).collect()))
    }
}
