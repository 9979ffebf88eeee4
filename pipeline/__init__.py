"""The GAN pipeline: five stages wired into one DAG, tracked in MLflow, run on Ray."""
