"""The napari widgets: thin Qt views over the Qt-free core (`interactive`, `automatic`,
`training`). Only this subpackage (and the CLI's `demo`) imports Qt or napari."""
