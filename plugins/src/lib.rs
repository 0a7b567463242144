//! `ecr-plugins`: the built-in stages of ecr, registered in one call.
//!
//! The stages themselves live with the code they wrap: symbolic stages in
//! [`ecr_data`], neural ones in [`ecr_neural`].

pub use ecr_data as data;
pub use ecr_engine::Registry;
pub use ecr_neural as neural;
pub use ecr_respond as respond;

/// Register every built-in stage in `registry`.
pub fn register_builtins(registry: &mut Registry) -> Result<(), ecr_engine::registry::RegistryError> {
    registry.register(ecr_data::EntityLinkerFactory)?;
    registry.register(ecr_neural::EmotionTaggerFactory)?;
    registry.register(ecr_data::LocalEmotionFactory)?;
    registry.register(ecr_data::GlobalEmotionFactory)?;
    registry.register(ecr_data::FeedbackMappingFactory)?;
    registry.register(ecr_neural::recommend::stage::RecommenderFactory)?;
    registry.register(ecr_respond::RetrieverFactory)?;
    registry.register(ecr_respond::PromptBuilderFactory)?;
    registry.register(ecr_respond::GeneratorFactory)?;
    Ok(())
}

/// A registry with the engine's own stages (`lua`, `dylib`) and every built-in.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    register_builtins(&mut r).expect("built-in stage names are unique");
    r
}
