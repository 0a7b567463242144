//! Train a recipe's stages from a host application, as `ecr train` does:
//! every trainable enabled stage in pipeline order, skipping the up-to-date ones.
//!
//! ```text
//! cargo run --release --example train -- recipes/ecr-quick.toml
//! ```

use ecr::Recipe;
use ecr::train::{JobOptions, TrainOptions, recipe_status, train_recipe};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).unwrap_or_else(|| "recipes/ecr-quick.toml".into());
    let recipe = Recipe::load(&path, &ecr::registry())?;
    for (stage, status) in recipe_status(&recipe)? {
        println!("{stage}: {status}");
    }
    let options = TrainOptions { job: JobOptions { progress: true, ..Default::default() }, ..Default::default() };
    for outcome in train_recipe(&recipe, &options)? {
        println!("{outcome}");
    }
    // The trained recipe builds and runs.
    let engine = ecr::Engine::from_recipe(&path)?;
    let out = engine.session().turn("I loved The Matrix, any other sci-fi?")?;
    println!("emotions: {:?}", out.turn.user.emotions.map(|d| d.top()));
    Ok(())
}
