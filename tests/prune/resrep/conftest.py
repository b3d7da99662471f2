import os
import sys

# the hand-written pruning test models (tests/passes/pruning_models.py) and this folder's resrep_models.py
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "passes"))
sys.path.insert(0, HERE)
