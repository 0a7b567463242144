//! `ecr-data`: ReDial dialogues, the movie catalogue, the DBpedia KG, reviews
//! and emotion annotations, entity linking, and ECR's training instances.

pub mod annotations;
pub mod catalogue;
pub mod cooccur;
pub mod emotion_source;
pub mod error;
pub mod feedback;
pub mod global_emotion;
pub mod instances;
pub mod jsonl;
pub mod keys;
pub mod kg;
pub mod linker;
pub mod linking_report;
pub mod local_emotion;
pub mod paths;
pub mod prepare;
pub mod progress;
pub mod redial;
pub mod replay;
pub mod reviews;
pub mod splits;
pub mod stage;
pub mod text;

pub use annotations::{Annotation, load_annotations};
pub use catalogue::{Catalogue, Movie, MovieInfo};
pub use cooccur::CoOccurrence;
pub use emotion_source::{EmotionSource, EmotionSources, EmotionTable, FirstOf, NoEmotions};
pub use error::DataError;
pub use feedback::{FeedbackMappingConfig, FeedbackMappingFactory};
pub use global_emotion::{GlobalEmotionConfig, GlobalEmotionFactory};
pub use instances::{ContextEntity, Dialogue, DialogueTurn, RecInstance};
pub use kg::{Kg, MovieLinkKind, link_movies};
pub use linker::{Linker, LinkerOptions};
pub use linking_report::{LinkingReport, Prf, linking_report};
pub use local_emotion::{LocalEmotionConfig, LocalEmotionFactory};
pub use paths::data_dir;
pub use prepare::{PrepareOptions, Prepared, Resources, SplitData, SplitStats, prepare, prepare_with_sources};
pub use redial::{Answer, Conversation, Message, load_conversations};
pub use reviews::{Review, load_reviews};
pub use stage::{EntityLinkerConfig, EntityLinkerFactory};
