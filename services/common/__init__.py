"""Code that at least two services truly share: authentication, database plumbing, logging."""
