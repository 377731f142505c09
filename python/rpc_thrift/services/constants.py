"""The base service's IDL defines no constants."""
