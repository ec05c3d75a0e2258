"""Qt bridge between the engine and the widgets.

QtCore/QtGui only (never QtWidgets). Torch-heavy engine modules are imported inside
functions that run on worker threads, so the window can appear before torch loads.
"""
