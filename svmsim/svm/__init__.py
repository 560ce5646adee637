"""AMD Secure Virtual Machine (APM vol 2, chapter 15)."""
