"""The Ray layer: Train loops, Tune searches and job drivers. The only place that imports Ray."""
