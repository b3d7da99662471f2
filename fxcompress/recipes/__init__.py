"""Recipes: a YAML file naming the model, the data and the passes of a compression run, checked against a
schema (`schema.py`) before anything runs, every error naming the file, line and key.

    recipe = load_recipe("digits")                       # a shipped recipe by name, or a path
    recipe = load_recipe("r.yaml", overrides=["pipeline.ResRep.epochs=3"])
"""
from .errors import RecipeError
from .load import apply_override, load_recipe, recipe_from_data, recipe_yaml, shipped_recipes
from .validate import Recipe

__all__ = ["Recipe", "RecipeError", "apply_override", "load_recipe", "recipe_from_data", "recipe_yaml",
           "shipped_recipes"]
