"""The backends: one package per framework, each implementing the capability protocols it registers in
``llmdual.contract``. They import the framework-free core (and the shared training driver), never each other."""
