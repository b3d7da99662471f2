import os
import sys

# the hand-written pruning test models are shared by several test files in this folder
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
