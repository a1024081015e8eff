"""Tools that turn other projects' artefacts into mclap ones."""
