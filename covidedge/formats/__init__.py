"""The files covidedge reads and writes, below every other layer: training checkpoints and engine
manifests. Nothing here imports the engine, runtime, train or evaluation packages."""
