"""Loss-weight search: the objective (pure figures) and the search space (YAML); Ray Tune lives in orchestration/."""
