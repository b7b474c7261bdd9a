"""Networks (experts, students, evaluation classifiers) and the DSA augmentation."""
