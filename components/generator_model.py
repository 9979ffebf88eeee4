"""The registered generator's model code. MLflow runs this file to build the served model (models from
code), so a registered version holds source code and a tensor file, never a pickled Python object."""
import mlflow

from components.registry import GeneratorPyfunc

mlflow.models.set_model(GeneratorPyfunc())
